import type { EntityManager } from '@mikro-orm/postgresql';
import { z } from 'zod';
import { canonicalJson, sha256Hex } from '../../platform/idempotency/canonical-json.ts';
import { NotFoundError } from '../../platform/errors/app-error.ts';
import { EvidencePackRow } from './evidence-pack.entity.ts';
import { sha256Schema } from '../golden-path/golden-path.schemas.ts';
import { compareRecords, evidenceRecords, recordJoinParams, recordsAgree, RECORD_COLUMNS, RECORD_JOINS, type RecordColumns } from './evidence-records.ts';

export { EVIDENCE_PACK_STEP } from './evidence-pack.entity.ts';

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
    valid: z
      .boolean()
      .describe(
        "recomputed_sha256 and recorded_sha256 both equal sha256, the content's run (content.run.id, content.run.tenant_id) is the pack's own, and its content agrees with its run's records: records.partner_dossier, records.economics_model and records.approval match, records.run matches or is absent (deleted by run retention), and records.approval_policy matches or is absent (a policy version replaced since)",
      ),
    sha256: sha256Schema.describe("The pack's stored hash"),
    recomputed_sha256: sha256Schema
      .nullable()
      .describe('Recomputed now from the stored content; null when that content has no RFC 8785 form (a number beyond a double\'s range or precision): it was changed'),
    recorded_sha256: sha256Schema.nullable().describe('Recorded apart from the pack (its seal) when the pack was written; null when no seal records this pack (its id, run and creation time) as written'),
    records: evidenceRecords,
  })
  .meta({ id: 'EvidenceVerification' });
export type EvidenceVerification = z.infer<typeof evidenceVerification>;

/**
 * Recomputes the hash from the stored content, and compares it with the hash the run recorded when
 * the pack was written: its seal (evidence_seals), written by the pack insert's trigger in the same
 * statement. A change to the content shows, and so does content rewritten together with its row's
 * hash. The seal is the one recording this pack as written — its id, run and creation time — so a pack
 * moved to another run or given another time reads as having none. The application role may only
 * insert packs and seals (roles.ts), so rewriting either takes the owner's rights. The seal, not the
 * run's checkpoint, is read: run retention deletes a run's checkpoints, never its evidence (ADR 0011).
 *
 * The hash is over the content as JSON reads it back, numbers as doubles; jsonb keeps numbers exactly,
 * so content changed by less than a double tells apart (65000 to 65000.0000000000000001) would hash
 * the same. The stored content is therefore also compared, in PostgreSQL, with the canonical JSON the
 * hash is recomputed over (jsonb equality: numbers by value, text by its bytes): content that differs
 * from it has no RFC 8785 form, and is reported so (`recomputed_sha256` null), as a number beyond a
 * double's range is.
 *
 * A seal proves the pack is the one written, not that what it says is what its run recorded: the
 * application role may insert a pack for a run of its tenant that has none yet. The same statement
 * therefore reads the run's records — its row while retention keeps it, its dossier, economics model,
 * approval request and decisions, which retention keeps — and the content is compared with them
 * (evidence-records.ts): `records` says what agreed, and a pack whose content disagrees is not valid.
 */
export async function verifyEvidence(em: EntityManager, id: string): Promise<EvidenceVerification> {
  const row = await getEvidence(em, id);
  const canonical = canonicalOrNull(row.content);
  const [seal] = await em.execute<({ recorded: string | null; exact: boolean | null } & RecordColumns)[]>(
    `select s.sha256 as recorded, e.content = ?::jsonb as exact, ${RECORD_COLUMNS}
       from evidence_packs e
       left join evidence_seals s on (s.tenant_id, s.id, s.run_id, s.created_at) = (e.tenant_id, e.id, e.run_id, e.created_at)
       ${RECORD_JOINS}
      where e.tenant_id = ? and e.id = ?`,
    [canonical, ...recordJoinParams(row.tenantId, row.runId), row.tenantId, row.id],
  );
  if (!seal) throw new NotFoundError('evidence pack');
  const recomputed = canonical !== null && seal.exact === true ? sha256Hex(canonical) : null;
  const recordedSha = seal.recorded;
  const records = compareRecords(row.content, seal);
  return {
    valid: recomputed === row.sha256 && recordedSha === row.sha256 && namesItsOwnRun(row.content, row.runId, row.tenantId) && recordsAgree(records),
    sha256: row.sha256,
    recomputed_sha256: recomputed,
    recorded_sha256: recordedSha,
    records,
  };
}

/**
 * Whether the content's `run` is the pack's own run and tenant. The application role may insert packs,
 * each sealed as written: a copy of a pack (its content and hash) under another run id, or into another
 * tenant, hashes and seals as the original does, while naming the original's run. The unique (tenant,
 * run) key allows one pack per run id, not per run its content names; this check makes it one valid
 * pack per run. Every pack the evidence step wrote names its run (lower-case UUIDs, as PostgreSQL
 * writes the row's).
 */
function namesItsOwnRun(content: unknown, runId: string, tenantId: string): boolean {
  const run = (content as { run?: { id?: unknown; tenant_id?: unknown } } | null)?.run;
  return typeof run?.id === 'string' && typeof run.tenant_id === 'string' && run.id.toLowerCase() === runId && run.tenant_id.toLowerCase() === tenantId;
}

/**
 * The canonical JSON of stored content, or null when it has none: what the evidence step wrote always
 * has, but jsonb also holds what JSON numbers cannot be read back as (1e400 reads as Infinity), so a
 * pack changed that way is reported not valid rather than failing the verification.
 */
function canonicalOrNull(content: unknown): string | null {
  try {
    return canonicalJson(content);
  } catch {
    return null;
  }
}
