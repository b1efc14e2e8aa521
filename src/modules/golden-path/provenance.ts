import { canonicalJson, sha256Hex } from '../../platform/idempotency/canonical-json.ts';
import { PRODUCER_VERSION, type Provenance } from './golden-path.schemas.ts';

/**
 * Where a step's output came from. `producedAt` is the database's time (a step's `ctx.now`), never this
 * worker's clock: an output produced by a worker whose clock is off would otherwise be dated before the
 * run it belongs to, or the approval it follows (docs/runtime.md, *The step algorithm*).
 */
export function provenance(source: Provenance['source'], method: string, inputs: unknown, producedAt: Date): Provenance {
  return { source, method, inputs_sha256: sha256Hex(canonicalJson(inputs)), producer_version: PRODUCER_VERSION, produced_at: producedAt.toISOString() };
}
