/**
 * Migration evidence_seals_run_retention on a database that has history: every tenant's evidence pack
 * gets its seal from the hash its run's evidence step recorded (although RLS is forced on the owner that
 * migrates), a genuine pack so sealed verifies as valid after every later migration (`/verify` matches
 * the seal on its created_at and compares its content in PostgreSQL), a pack without such a checkpoint
 * gets none, row-level security is still forced, the system
 * role may delete ended runs only, and the schema then matches the entities with nothing pending (what
 * `npm run db:check` reports). Down and up again too.
 */
import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createOrm } from '../../src/platform/db/orm.ts';
import { migrate, schemaStatus } from '../../src/platform/db/migrate.ts';
import { entities } from '../../src/entities.ts';
import { migrateUpTo, migrationTestDatabase } from '../helpers/migrations.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { evidenceHash, verifyEvidence } from '../../src/modules/evidence/evidence.service.ts';
import { sealedButUnrecorded } from '../helpers/evidence.ts';

const PREVIOUS = 'Migration20261203182726_approval_policy_changes';
const THIS = 'Migration20261203182756_evidence_seals_run_retention';

const database = migrationTestDatabase();
const admin = database.admin;
const hex = (c: string) => c.repeat(64);

/**
 * A completed golden-path run with its evidence pack (`packSha`) and, unless `recorded` is null, its
 * evidence step's checkpoint recording `recorded` — as the release before this one stored them.
 */
async function runWithPack(tenant: string, packSha: string, recorded: string | null, content: unknown = {}, runId = randomUUID()): Promise<{ runId: string; packId: string }> {
  const packId = randomUUID();
  await admin(
    `insert into durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, correlation_id, step_count, created_at, updated_at, completed_at)
     values ($1, $2, 'golden-path', 1, $3, 'completed', 'submitter-1', '{}', 'c', 4, now() - interval '2 hours', now() - interval '1 hour', now() - interval '1 hour')`,
    [runId, tenant, randomUUID().replaceAll('-', '')],
  );
  await admin(`insert into evidence_packs (id, tenant_id, run_id, content, sha256, created_at) values ($1, $2, $3, $5::jsonb, $4, now() - interval '1 hour')`, [packId, tenant, runId, packSha, JSON.stringify(content)]);
  if (recorded !== null) {
    await admin(
      `insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, output, attempt, created_at, updated_at, completed_at)
       values ($1, $2, $3, 4, 'evidence-pack', 'completed', $4, 1, now(), now(), now())`,
      [randomUUID(), tenant, runId, JSON.stringify({ evidence_pack_id: packId, sha256: recorded, outcome: 'approved' })],
    );
  }
  return { runId, packId };
}

const seals = async () => Object.fromEntries((await admin(`select id, tenant_id, run_id, sha256 from evidence_seals`)).map((r) => [r.id as string, r]));

describe('migration evidence_seals_run_retention', () => {
  it("seals every tenant's evidence packs with the hash their runs recorded, keeps RLS forced, lets the system role delete ended runs only, and leaves db:check clean; down and up again", async () => {
    const pending = await migrateUpTo(database.config, PREVIOUS);
    expect(pending[0]).toBe(THIS);
    const [t1, t2] = [randomUUID(), randomUUID()];
    const sealed = [await runWithPack(t1, hex('a'), hex('a')), await runWithPack(t2, hex('b'), hex('b'))];
    // Changed (with its own hash) before the migration: the seal is the run's record, so verify still shows it.
    const changed = await runWithPack(t1, hex('c'), hex('d'));
    const unrecorded = await runWithPack(t2, hex('e'), null);
    // A genuine pack as the release before wrote it (its time with microseconds, numbers jsonb keeps as
    // exact decimals): once sealed from its checkpoint, /verify — content and seal compared in PostgreSQL,
    // the seal matched on the pack's created_at — must read it valid after every later migration too.
    const genuineRun = randomUUID();
    const content = {
      schema: 'dealix.evidence-pack/v1',
      run: { id: genuineRun, tenant_id: t1 },
      outcome: 'approved',
      economics_model: { revenue_upside: 3e16, cost: 65000, payback_months: 1e-7, ratio: 0.1 + 0.2 },
      note: 'e\u0301 \u2028 \u{1F600}',
    };
    const genuine = await runWithPack(t1, evidenceHash(content), evidenceHash(content), content, genuineRun);

    expect(await migrate(database.config, entities)).toEqual(pending);
    const after = await seals();
    expect(Object.keys(after).sort()).toEqual([...sealed, changed, genuine].map((p) => p.packId).sort());
    for (const [p, tenant, sha] of [[sealed[0]!, t1, hex('a')], [sealed[1]!, t2, hex('b')], [changed, t1, hex('d')]] as const) {
      expect(after[p.packId]).toEqual({ id: p.packId, tenant_id: tenant, run_id: p.runId, sha256: sha });
    }
    expect(after[unrecorded.packId]).toBeUndefined();
    // As the application role (migrate() grants it), under the tenant's RLS: the genuine pack's hash and
    // seal agree (its content is made up for the test: no records of its run's steps agree with it).
    const app = await createOrm(database.config, { entities, poolMax: 1 });
    try {
      const sha256 = evidenceHash(content);
      expect(await tenantEm(app, t1).transactional((tx) => verifyEvidence(tx, genuine.packId))).toEqual(sealedButUnrecorded(sha256));
    } finally {
      await app.close(true);
    }
    expect(await admin(`select relname, relrowsecurity, relforcerowsecurity from pg_class where relname in ('durable_checkpoints', 'evidence_packs', 'evidence_seals') order by relname`)).toEqual([
      { relname: 'durable_checkpoints', relrowsecurity: true, relforcerowsecurity: true },
      { relname: 'evidence_packs', relrowsecurity: true, relforcerowsecurity: true },
      { relname: 'evidence_seals', relrowsecurity: true, relforcerowsecurity: true },
    ]);
    expect(await admin(`select cmd, roles::text[] as roles, qual from pg_policies where tablename = 'durable_runs' and policyname = 'durable_runs_system_retention'`)).toEqual([
      { cmd: 'DELETE', roles: ['dealix_system'], qual: expect.stringContaining("'approval_expired'::text") },
    ]);
    const check = await createOrm(database.config, { entities, role: 'owner', poolMax: 1 });
    try {
      expect(await schemaStatus(check)).toEqual({ pending: [], drift: '' });

      await check.migrator.down({ to: PREVIOUS });
      expect(await admin(`select to_regclass('evidence_seals') is null as gone, (select count(*)::int from pg_policies where policyname = 'durable_runs_system_retention') as policies`)).toEqual([
        { gone: true, policies: 0 },
      ]);
      await check.migrator.up();
      expect(await seals()).toEqual(after);
      expect(await schemaStatus(check)).toEqual({ pending: [], drift: '' });
    } finally {
      await check.close(true);
    }
  });
});
