import { defineEntity, p } from '@mikro-orm/core';
import { tenantIdProperty, tenantIsolationPolicy } from '../../platform/db/tenant-owned.ts';
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
 * keeps their packs (ADR 0011), which a foreign key would cascade to or block. It checks the run a pack
 * names, not what the pack says of it: `/verify` compares that with the records the run's steps wrote
 * (evidence-records.ts), since the application role may insert a pack for a real run that has none yet.
 */
export const EVIDENCE_SEAL_TRIGGER = 'seal';

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
      body:
        "if not exists (select from durable_runs where tenant_id = new.tenant_id and id = new.run_id) then raise exception 'evidence pack % names run %, which is no run of tenant %', new.id, new.run_id, new.tenant_id using errcode = 'foreign_key_violation'; end if; " +
        'insert into evidence_seals (id, tenant_id, run_id, sha256, created_at) values (new.id, new.tenant_id, new.run_id, new.sha256, new.created_at); return null;',
    },
  ],
});
