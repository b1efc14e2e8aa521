import type { EntityManager } from '@mikro-orm/postgresql';
import { canonicalJson, sha256Hex } from '../../platform/idempotency/canonical-json.ts';
import { NotFoundError } from '../../platform/errors/app-error.ts';
import { EvidencePackRow } from './evidence-pack.entity.ts';

/** SHA-256 over the RFC 8785 canonical JSON of the content. */
export function evidenceHash(content: unknown): string {
  return sha256Hex(canonicalJson(content));
}

export async function getEvidence(em: EntityManager, id: string) {
  const row = await em.findOne(EvidencePackRow, { id });
  if (!row) throw new NotFoundError('evidence pack');
  return row;
}

/** Recomputes the hash from the stored content: any change to the row after it was written shows. */
export async function verifyEvidence(em: EntityManager, id: string): Promise<{ valid: boolean; sha256: string; recomputed_sha256: string }> {
  const row = await getEvidence(em, id);
  const recomputed = evidenceHash(row.content);
  return { valid: recomputed === row.sha256, sha256: row.sha256, recomputed_sha256: recomputed };
}
