import type { EntityManager } from '@mikro-orm/postgresql';
import { z } from 'zod';
import { canonicalJson, sha256Hex } from '../../platform/idempotency/canonical-json.ts';
import { NotFoundError } from '../../platform/errors/app-error.ts';
import { EvidencePackRow } from './evidence-pack.entity.ts';
import { sha256Schema } from '../golden-path/golden-path.schemas.ts';

/** The golden path's evidence step (its name is persisted in checkpoints: never renamed). */
export const EVIDENCE_PACK_STEP = 'evidence-pack';

/** SHA-256 over the RFC 8785 canonical JSON of the content. */
export function evidenceHash(content: unknown): string {
  return sha256Hex(canonicalJson(content));
}

export async function getEvidence(em: EntityManager, id: string) {
  const row = await em.findOne(EvidencePackRow, { id });
  if (!row) throw new NotFoundError('evidence pack');
  return row;
}

export const evidenceVerification = z
  .strictObject({
    valid: z.boolean().describe('recomputed_sha256 and recorded_sha256 both equal sha256'),
    sha256: sha256Schema.describe("The pack's stored hash"),
    recomputed_sha256: sha256Schema
      .nullable()
      .describe('Recomputed now from the stored content; null when that content has no RFC 8785 form (e.g. a number beyond a double): it was changed'),
    recorded_sha256: sha256Schema.nullable().describe('Recorded apart from the pack (its seal) when the pack was written'),
  })
  .meta({ id: 'EvidenceVerification' });
export type EvidenceVerification = z.infer<typeof evidenceVerification>;

/**
 * Recomputes the hash from the stored content, and compares it with the hash the run recorded when
 * the pack was written: its seal (evidence_seals), written by the pack insert's trigger in the same
 * statement. A change to the content shows, and so does content
 * rewritten together with its row's hash. The application role may only insert packs and seals
 * (roles.ts), so rewriting either takes the owner's rights. The seal, not the run's checkpoint, is
 * read: run retention deletes a run's checkpoints, never its evidence (ADR 0011).
 */
export async function verifyEvidence(em: EntityManager, id: string): Promise<EvidenceVerification> {
  const row = await getEvidence(em, id);
  const recomputed = recomputedHash(row.content);
  const [recorded] = await em.execute<{ sha256: string }[]>(`select sha256 from evidence_seals where tenant_id = ? and id = ? and run_id = ?`, [row.tenantId, row.id, row.runId]);
  const recordedSha = recorded?.sha256 ?? null;
  return { valid: recomputed === row.sha256 && recordedSha === row.sha256, sha256: row.sha256, recomputed_sha256: recomputed, recorded_sha256: recordedSha };
}

/**
 * The hash over stored content, or null when the content cannot be canonicalised: what the evidence
 * step wrote always can, but jsonb also holds what JSON numbers cannot be read back as (1e400 reads as
 * Infinity), so a pack changed that way is reported not valid rather than failing the verification.
 */
function recomputedHash(content: unknown): string | null {
  try {
    return evidenceHash(content);
  } catch {
    return null;
  }
}
