import { defineEntity, p } from '@mikro-orm/core';
import { tenantIdProperty, tenantIsolationPolicy } from '../../platform/db/tenant-owned.ts';
import { committedWithItsStep } from '../../platform/durable/durable-checkpoint.entity.ts';
import type { EvidencePackContent } from '../golden-path/golden-path.schemas.ts';

/**
 * The seal written with every pack, whoever inserts it: the row's hash as it was written, kept apart in
 * evidence_seals (what `/verify` compares with, ADR 0011). A trigger rather than the evidence step, so a
 * pack an older release writes — a worker not yet rolled, or one redeployed by a rollback, knows nothing
 * of seals — is sealed too, instead of reading as tampered with (no seal) once its run's checkpoints are gone.
 * In the insert's own statement and transaction, as the inserting role (the application role may insert
 * seals, never change them: roles.ts); the seal's RLS check holds, as the pack's own did.
 *
 * The trigger also refuses (23503, foreign_key_violation) a pack whose (tenant, run) is no run of the
 * database — a made-up run id, or another tenant's run (read under the inserting role's RLS): the
 * application role may insert packs, and without it could write a self-consistent pack for a run that
 * never was. A check when the pack is written, not a foreign key: run retention deletes ended runs and
 * keeps their packs (ADR 0011), which a foreign key would cascade to or block. And it refuses (DX001,
 * the run no longer active, as a checkpoint's write does) a pack for a run that is not pending or
 * running: the evidence step
 * writes its pack in its own transaction, while its run is running (or pending, a failed run retried at
 * that step), never while the run waits for its approvers or after it ended — a run waiting days for an
 * approver, or one that failed, expired or was cancelled without a pack, was a run the application role
 * could write a pack for. DX001, not a code of its own: a run cancelled after its evidence step read it
 * and before the pack's insert is refused here rather than by the checkpoint's write after it, and the
 * executor must take it as it takes that — the run no longer active, read it again, end quietly — not
 * as the step failing. Packs already written are left as they are. It checks the run a pack
 * names, not what the pack says of it: `/verify` compares that with the records the run's steps wrote
 * (evidence-records.ts), since the application role may insert a pack for a real run that has none yet.
 */
export const EVIDENCE_SEAL_TRIGGER = 'seal';

/** The golden path's evidence step (its name is persisted in checkpoints, and named by evidence_packs' trigger: never renamed). */
export const EVIDENCE_PACK_STEP = 'evidence-pack';

/** Step 4's output: the evidence pack, its canonical JSON content and SHA-256. */
export const EvidencePackRow = defineEntity({
  name: 'EvidencePack',
  tableName: 'evidence_packs',
  properties: {
    id: p.uuid().primary(),
    tenantId: tenantIdProperty(),
    runId: p.uuid(),
    content: p.json<EvidencePackContent>(),
    sha256: p.string().length(64),
    createdAt: p.datetime(),
  },
  uniques: [{ name: 'evidence_packs_tenant_run_unique', properties: ['tenantId', 'runId'] }],
  rowLevelSecurity: 'force',
  policies: [tenantIsolationPolicy('evidence_packs')],
  triggers: [
    {
      name: EVIDENCE_SEAL_TRIGGER,
      timing: 'after',
      events: ['insert'],
      // One read of the run by its key on the step's path (`status || ''`: no partial status index, as
      // the executor's statements naming a run); the second and third only when the pack is refused.
      body:
        "if not exists (select from public.durable_runs where tenant_id = new.tenant_id and id = new.run_id and (status || '') in ('pending', 'running')) then " +
        "if exists (select from public.durable_runs where tenant_id = new.tenant_id and id = new.run_id) then raise exception 'evidence pack % names run %, which is %: a pack is written by its run''s evidence step, while the run is pending or running', new.id, new.run_id, (select status from public.durable_runs where tenant_id = new.tenant_id and id = new.run_id) using errcode = 'DX001'; end if; " +
        "raise exception 'evidence pack % names run %, which is no run of tenant %', new.id, new.run_id, new.tenant_id using errcode = 'foreign_key_violation'; end if; " +
        'insert into public.evidence_seals (id, tenant_id, run_id, sha256, created_at) values (new.id, new.tenant_id, new.run_id, new.sha256, new.created_at); return null;',
    },
    // Only with the evidence step's checkpoint that names it, its id and hash (committedWithItsStep, at the
    // commit): a pack for a run that has not reached its evidence step, or one the step did not write, is refused (42501).
    committedWithItsStep({ step: EVIDENCE_PACK_STEP, statuses: ['completed'], names: { evidence_pack_id: 'id', sha256: 'sha256' }, row: 'evidence pack' }),
  ],
});
