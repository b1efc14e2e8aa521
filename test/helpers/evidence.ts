import type { EvidenceVerification } from '../../src/modules/evidence/evidence.service.ts';
import type { TestDatabase } from './db.ts';

/**
 * What `/verify` answers for a test's synthetic pack — content made up for the hash and seal it tests,
 * naming a seeded run whose steps wrote nothing: its hash and seal agree, and it is still not valid,
 * since its run recorded no dossier, economics model or approval to agree with (evidence-records.ts).
 * `run` is `mismatch` while the seeded run is there (the content names none of its fields), `absent`
 * once deleted (run retention).
 */
export function sealedButUnrecorded(sha256: string, run: 'mismatch' | 'absent' = 'mismatch'): EvidenceVerification {
  return { valid: false, sha256, recomputed_sha256: sha256, recorded_sha256: sha256, records: { run, partner_dossier: 'absent', economics_model: 'absent', approval: 'absent', approval_policy: 'absent' } };
}

/** A genuine pack's records, each compared and agreeing (`run` absent once run retention deleted the run). */
export const RECORDS_MATCH = { run: 'match', partner_dossier: 'match', economics_model: 'match', approval: 'match', approval_policy: 'match' } as const;

/**
 * Makes `runId`'s checkpoint of `step` (the owner, setup only) name a row a test then inserts as the
 * application role, as the step's own checkpoint does: a pack (`evidence-pack`: its id and sha256) or an
 * approval request (`approval-packet`: its id, class and required approvals) commits only with it
 * (committedWithItsStep). The run's checkpoint of that step, if it has one, is given those fields; else one
 * is written, completed, at the step's place in the golden path.
 */
export async function stepCheckpointNames(
  db: Pick<TestDatabase, 'admin'>,
  tenant: string,
  runId: string,
  step: 'evidence-pack' | 'approval-packet',
  fields: Record<string, unknown>,
): Promise<void> {
  await db.admin(
    `with named as (update durable_checkpoints set output = coalesce(output, '{}'::jsonb) || $4::jsonb where tenant_id = $1 and run_id = $2 and step_name = $3 returning 1)
     insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, output, attempt, created_at, updated_at, completed_at)
     select gen_random_uuid(), $1, $2, $5, $3, 'completed', $4::jsonb, 1, now(), now(), now() where not exists (select from named)`,
    [tenant, runId, step, JSON.stringify(fields), step === 'evidence-pack' ? 4 : 3],
  );
}
