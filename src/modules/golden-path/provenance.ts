import { canonicalJson, sha256Hex } from '../../platform/idempotency/canonical-json.ts';
import { PRODUCER_VERSION, type Provenance } from './golden-path.schemas.ts';

export function provenance(source: Provenance['source'], method: string, inputs: unknown): Provenance {
  return { source, method, inputs_sha256: sha256Hex(canonicalJson(inputs)), producer_version: PRODUCER_VERSION, produced_at: new Date().toISOString() };
}
