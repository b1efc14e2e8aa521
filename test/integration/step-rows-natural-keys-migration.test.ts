/**
 * Migration step_rows_natural_keys on a database that has history: the checkpoints, dossiers, economics
 * models and evidence seals are keyed by (tenant_id, run_id[, sequence_num]), the approval decisions by
 * (tenant_id, approval_request_id, approver), and keep no index on their random `id` (one B-tree insert
 * less per row a step writes: docs/performance-history.md, session 24); every row stays; a second checkpoint of a
 * step, a second row of a run or a second decision of an approver is still refused (23505), and the
 * `on conflict` clauses that name those columns still find their key; row-level security
 * is still forced, and the schema then matches the entities with nothing pending (what `npm run db:check`
 * reports). Down and up again too. Indexes built beforehand by hand, concurrently, as `<table>_natural_key`
 * (docs/runbook.md) become the primary keys as they are, and one that is not the key stops the migration.
 * The tables are locked in a step's order: an approval step that read its checkpoints is not deadlocked,
 * nor is a decision (it reads its run's checkpoints before its request's decisions).
 */
import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { createOrm } from '../../src/platform/db/orm.ts';
import { migrate, schemaStatus } from '../../src/platform/db/migrate.ts';
import { entities } from '../../src/entities.ts';
import { migrateUpTo, migrationTestDatabase } from '../helpers/migrations.ts';
import { waitFor } from '../helpers/poll.ts';
import { holdTable } from '../helpers/table-lock.ts';
import { SAMPLE_SUBMISSION } from '../helpers/stack.ts';
import { TEST_REDIS_URL } from '../helpers/env.ts';
import { createHash } from 'node:crypto';
import { Job, Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { DurableRuntime, type StepJobData } from '../../src/platform/durable/runtime.ts';
import { StepExecutor } from '../../src/platform/durable/executor.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { goldenPathWorkflow, GOLDEN_PATH } from '../../src/modules/golden-path/golden-path.workflow.ts';
import { approvalPacketStep } from '../../src/modules/approvals/approval-packet.step.ts';
import { evidencePackStep } from '../../src/modules/evidence/evidence-pack.step.ts';
import { ApprovalService } from '../../src/modules/approvals/approval.service.ts';
import { APPROVER_ROLE } from '../../src/modules/approvals/approval.constants.ts';

const PREVIOUS = 'Migration20261204155914_tenant_limits_operator_role';
const THIS = 'Migration20261204190335_step_rows_natural_keys';
const TABLES = ['approval_decisions', 'durable_checkpoints', 'economics_models', 'evidence_seals', 'partner_dossiers'];

const database = migrationTestDatabase();
const admin = database.admin;

/** A completed golden-path run with two checkpoints, its dossier, economics model, approval request and decision, and evidence pack (whose trigger writes the seal). */
async function runWithRows(tenant: string): Promise<string> {
  const runId = randomUUID();
  await admin(
    `insert into durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, correlation_id, step_count, created_at, updated_at, completed_at)
     values ($1, $2, 'golden-path', 1, $3, 'completed', 'submitter-1', '{}', 'c', 4, now(), now(), now())`,
    [runId, tenant, randomUUID().replaceAll('-', '')],
  );
  for (const seq of [1, 2]) {
    await admin(
      `insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, output, attempt, created_at, updated_at, completed_at)
       values ($1, $2, $3, $4, 'step', 'completed', '{}', 1, now(), now(), now())`,
      [randomUUID(), tenant, runId, seq],
    );
  }
  await admin(`insert into partner_dossiers (id, tenant_id, run_id, partner_name, country, completeness_score, content, created_at) values ($1, $2, $3, 'Acme', 'SA', 1, '{}', now())`, [randomUUID(), tenant, runId]);
  await admin(`insert into economics_models (id, tenant_id, run_id, currency, cost, payback_months, content, created_at) values ($1, $2, $3, 'SAR', 1, 1, '{}', now())`, [randomUUID(), tenant, runId]);
  await admin(`insert into evidence_packs (id, tenant_id, run_id, content, sha256, created_at) values ($1, $2, $3, '{}', $4, now())`, [randomUUID(), tenant, runId, 'a'.repeat(64)]);
  const requestId = randomUUID();
  await admin(
    `insert into approval_requests (id, tenant_id, run_id, approval_class, required_approvals, status, submitted_by, reasons, created_at, updated_at)
     values ($1, $2, $3, 'A', 0, 'approved', 'submitter-1', '[]', now(), now())`,
    [requestId, tenant, runId],
  );
  await admin(decisionSql, [randomUUID(), tenant, requestId, 'system']);
  return runId;
}

const decisionSql = `insert into approval_decisions (id, tenant_id, approval_request_id, approver, decision, kind, created_at) values ($1, $2, $3, $4, 'approve', 'system', now())`;

/** Every row of the five tables, as (table, id, tenant, run or request, sequence). */
async function allRows(): Promise<Record<string, unknown>[]> {
  return admin(
    TABLES.map((t) => `select '${t}' as t, id, tenant_id, ${t === 'approval_decisions' ? 'approval_request_id' : 'run_id'} as parent, ${t === 'durable_checkpoints' ? 'sequence_num' : 'null::int'} as seq from ${t}`).join(' union all ') +
      ' order by t, id',
  );
}

/** Each table's indexes, as PostgreSQL prints them. */
const indexes = async () =>
  Object.fromEntries(
    await Promise.all(
      TABLES.map(async (t) => [t, (await admin(`select indexrelid::regclass::text as name, pg_get_indexdef(indexrelid) as def, indisprimary as pk from pg_index where indrelid = $1::regclass order by 1`, [t])).map((r) => `${r.name}${r.pk ? ' (primary)' : ''}: ${String(r.def).replace(/^.* USING /, '')}`)]),
    ),
  );

/** The indexes of the five tables once the migration has run: the primary key alone. */
const KEYED = {
  approval_decisions: ['approval_decisions_pkey (primary): btree (tenant_id, approval_request_id, approver)'],
  durable_checkpoints: ['durable_checkpoints_pkey (primary): btree (tenant_id, run_id, sequence_num)'],
  economics_models: ['economics_models_pkey (primary): btree (tenant_id, run_id)'],
  evidence_seals: ['evidence_seals_pkey (primary): btree (tenant_id, run_id)'],
  partner_dossiers: ['partner_dossiers_pkey (primary): btree (tenant_id, run_id)'],
};

const sqlState = (p: Promise<unknown>) => p.then(() => 'succeeded', (e: { code?: string }) => e.code ?? String(e));

describe('migration step_rows_natural_keys', () => {
  it('keys the step rows by tenant and run with one index each, keeps every row and every uniqueness, keeps RLS forced and db:check clean; down and up again', async () => {
    const pending = await migrateUpTo(database.config, PREVIOUS);
    expect(pending[0]).toBe(THIS);
    const [t1, t2] = [randomUUID(), randomUUID()];
    const runs = [await runWithRows(t1), await runWithRows(t1), await runWithRows(t2)];
    const before = await allRows();
    expect(before).toHaveLength(3 * 6);

    expect(await migrate(database.config, entities)).toEqual(pending);
    expect(await indexes()).toEqual(KEYED);
    expect(await allRows()).toEqual(before);

    // Still one checkpoint per run and step, one dossier, model and seal per run, one decision per approver.
    const cp = `insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, attempt, created_at, updated_at) values ($1, $2, $3, $4, 'step', 'failed', 1, now(), now())`;
    expect(await sqlState(admin(cp, [randomUUID(), t1, runs[0], 1]))).toBe('23505');
    expect(await sqlState(admin(`insert into partner_dossiers (id, tenant_id, run_id, partner_name, country, completeness_score, content, created_at) values ($1, $2, $3, 'Acme', 'SA', 1, '{}', now())`, [randomUUID(), t1, runs[0]]))).toBe('23505');
    expect(await sqlState(admin(`insert into economics_models (id, tenant_id, run_id, currency, cost, content, created_at) values ($1, $2, $3, 'SAR', 1, '{}', now())`, [randomUUID(), t2, runs[2]]))).toBe('23505');
    expect(await sqlState(admin(`insert into evidence_seals (id, tenant_id, run_id, sha256, created_at) values ($1, $2, $3, $4, now())`, [randomUUID(), t1, runs[1], 'b'.repeat(64)]))).toBe('23505');
    const [request] = await admin(`select approval_request_id as id from approval_decisions where tenant_id = $1 limit 1`, [t2]);
    expect(await sqlState(admin(decisionSql, [randomUUID(), t2, request!.id, 'system']))).toBe('23505');
    expect(await admin(`${decisionSql} on conflict (tenant_id, approval_request_id, approver) do nothing returning id`, [randomUUID(), t2, request!.id, 'system'])).toEqual([]);
    // The executor's failure path names the key by its columns (executor.ts): it still has an arbiter.
    const upsert = `${cp} on conflict (tenant_id, run_id, sequence_num) do update set status = 'failed' where durable_checkpoints.status <> 'completed' returning id`;
    expect(await admin(upsert, [randomUUID(), t1, runs[0], 2])).toEqual([]);
    expect(await admin(upsert, [randomUUID(), t1, runs[0], 3])).toHaveLength(1);

    expect(await admin(`select relname, relforcerowsecurity from pg_class where relname = any($1) order by relname`, [TABLES])).toEqual(TABLES.map((relname) => ({ relname, relforcerowsecurity: true })));
    const check = await createOrm(database.config, { entities, role: 'owner', poolMax: 1 });
    try {
      expect(await schemaStatus(check)).toEqual({ pending: [], drift: '' });
      const after = await allRows();

      await check.migrator.down({ to: PREVIOUS });
      expect((await indexes()).durable_checkpoints).toEqual([
        'durable_checkpoints_pkey (primary): btree (id)',
        'durable_checkpoints_tenant_run_seq_unique: btree (tenant_id, run_id, sequence_num)',
      ]);
      await check.migrator.up();
      expect(await allRows()).toEqual(after);
      expect(await schemaStatus(check)).toEqual({ pending: [], drift: '' });
    } finally {
      await check.close(true);
    }
  });

  it('makes an index built beforehand by hand, concurrently, the primary key instead of building one under the lock; refuses one that is not the key', async () => {
    // At PREVIOUS whether or not the test above ran (it leaves the migration applied).
    await migrateUpTo(database.config, PREVIOUS);
    const check = await createOrm(database.config, { entities, role: 'owner', poolMax: 1 });
    try {
      await check.migrator.down({ to: PREVIOUS });
      expect((await check.migrator.getPending()).map((m) => m.name)[0]).toBe(THIS);
      await runWithRows(randomUUID());
      const before = await allRows();
      const columns: Record<string, string> = {
        approval_decisions: 'tenant_id, approval_request_id, approver',
        durable_checkpoints: 'tenant_id, run_id, sequence_num',
        economics_models: 'tenant_id, run_id',
        evidence_seals: 'tenant_id, run_id',
        partner_dossiers: 'tenant_id, run_id',
      };
      // What docs/runbook.md says to run before the release, one statement each (concurrently: outside a transaction).
      for (const t of TABLES) await admin(`create unique index concurrently ${t}_natural_key on ${t} (${columns[t]})`);
      const oid = async (name: string) => (await admin(`select to_regclass($1)::oid as oid`, [name]))[0]!.oid as number | null;
      const prebuilt = Object.fromEntries(await Promise.all(TABLES.map(async (t) => [t, await oid(`${t}_natural_key`)])));

      // A prebuilt index with the wrong columns stops the migration, which changes nothing.
      await admin(`drop index partner_dossiers_natural_key`);
      await admin(`create unique index concurrently partner_dossiers_natural_key on partner_dossiers (tenant_id, run_id, id)`);
      await expect(check.migrator.up()).rejects.toThrow(/index partner_dossiers_natural_key is not valid or not CREATE UNIQUE INDEX partner_dossiers_natural_key ON public.partner_dossiers USING btree \(tenant_id, run_id\)/);
      expect((await indexes()).durable_checkpoints).toEqual([
        'durable_checkpoints_natural_key: btree (tenant_id, run_id, sequence_num)',
        'durable_checkpoints_pkey (primary): btree (id)',
        'durable_checkpoints_tenant_run_seq_unique: btree (tenant_id, run_id, sequence_num)',
      ]);
      await admin(`drop index partner_dossiers_natural_key`);
      await admin(`create unique index concurrently partner_dossiers_natural_key on partner_dossiers (tenant_id, run_id)`);
      prebuilt.partner_dossiers = await oid('partner_dossiers_natural_key');

      await check.migrator.up();
      // The same index (same oid), renamed to the primary key's name: nothing was built under the lock.
      expect(Object.fromEntries(await Promise.all(TABLES.map(async (t) => [t, await oid(`${t}_pkey`)])))).toEqual(prebuilt);
      expect(await indexes()).toEqual(KEYED);
      expect(await allRows()).toEqual(before);
      expect(await schemaStatus(check)).toEqual({ pending: [], drift: '' });
    } finally {
      await check.close(true);
    }
  });

  it("locks the tables in a step's order — the dossier, the checkpoints, then the rest — so an approval step that read its checkpoints inserts its decision instead of deadlocking with the migration", async () => {
    await migrateUpTo(database.config, PREVIOUS);
    const check = await createOrm(database.config, { entities, role: 'owner', poolMax: 1 });
    const step = new pg.Client({ connectionString: database.config.MIGRATION_DATABASE_URL });
    await step.connect();
    try {
      await check.migrator.down({ to: PREVIOUS });
      const tenant = randomUUID();
      const runId = await runWithRows(tenant);
      const [request] = await admin(`select id from approval_requests where run_id = $1`, [runId]);
      // What the approval step's transaction does: reads its run's checkpoints (loadRunState), then inserts its decision.
      await step.query('begin');
      await step.query(`select set_config('app.tenant_id', $1, true)`, [tenant]);
      await step.query(`select count(*) from durable_checkpoints where tenant_id = $1 and run_id = $2`, [tenant, runId]);
      const migrated = check.migrator.up().then(() => 'applied', (e: Error) => e.message);
      await waitFor(
        async () =>
          (await admin(
            `select count(*)::int as n from pg_locks l join pg_class c on c.oid = l.relation
              where l.database = (select oid from pg_database where datname = current_database()) and c.relname = 'durable_checkpoints' and l.mode = 'AccessExclusiveLock' and not l.granted`,
          ))[0]!.n === 1,
        { what: 'the migration waiting for the checkpoints' },
      );
      expect(await sqlState(step.query(decisionSql, [randomUUID(), tenant, request!.id, 'approver-2']))).toBe('succeeded');
      await step.query('commit');
      expect(await migrated).toBe('applied');
      expect(await indexes()).toEqual(KEYED);
    } finally {
      await step.end();
      await check.close(true);
    }
  });

  it("a decision held inside its insert, past its reads, is not deadlocked with the migration either: it reads its run's checkpoints before the request's decisions, as a step reads them before writing its rows", async () => {
    await migrateUpTo(database.config, PREVIOUS);
    const check = await createOrm(database.config, { entities, role: 'owner', poolMax: 1 });
    const app = await createOrm(database.config, { entities, poolMax: 3 });
    const redis = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
    const queue = new Queue('decision-migration', { connection: redis, prefix: `t${randomUUID().slice(0, 8)}` });
    try {
      await check.migrator.down({ to: PREVIOUS });
      // Today's approval step records the policy version on its request, a column a later migration
      // (approval_policy_versions) adds: given to the previous schema for this test alone, dropped in
      // `finally`, and only THIS migration is applied below, so that later one never meets it.
      await admin(`alter table approval_requests add column policy_version int`);
      // A class B golden-path run taken to its wait by the production executor, as the application role
      // on the previous schema (the SLA timer is not this test's: scheduling it does nothing).
      const noTimer = { async schedule() {}, async cancel() {} };
      const wf = goldenPathWorkflow(approvalPacketStep({ slaBSeconds: 3600, slaCSeconds: 3600, sla: noTimer }), evidencePackStep, undefined);
      const logger = pino({ level: 'silent' });
      const runtime = new DurableRuntime({ workflows: [wf], queues: new Map(), logger });
      const tenant = randomUUID();
      const { run } = await tenantEm(app, tenant).transactional((tx) =>
        runtime.start_run(tx, GOLDEN_PATH, { tenantId: tenant, principal: 'submitter-1', idempotencyHash: createHash('sha256').update(randomUUID()).digest('hex'), input: SAMPLE_SUBMISSION, correlationId: randomUUID() }),
      );
      const data: StepJobData = { run_id: run.id, tenant_id: tenant, workflow: GOLDEN_PATH, workflow_version: 1, step: 'partner-dossier', sequence_num: 1, _correlation_id: run.correlation_id };
      const job = await Job.create(queue, 'partner-dossier', data, { jobId: `gp-${run.id}`, attempts: 5 });
      expect((await new StepExecutor({ orm: app, runtime, logger, workerId: 'w', leaseMs: 5000 }).process(job)).status).toBe('waiting');
      const [request] = await admin(`select id from approval_requests where run_id = $1 and status = 'pending'`, [run.id]);

      // The decision is held inside its insert (its webhook outbox waits for a lock held here), past its
      // read of the request's decisions; the migration then starts, and the decision is let go once it waits.
      const outbox = await holdTable(database.config.MIGRATION_DATABASE_URL!, 'webhook_deliveries');
      try {
        const approvals = new ApprovalService(runtime);
        const approver = { sub: 'approver-1', tenantId: tenant, roles: [APPROVER_ROLE] };
        const decided = tenantEm(app, tenant)
          .transactional((tx) => approvals.decide(tx, approver, request!.id, 'approve', null))
          .then((d) => d.result.status, (e: Error) => e.message);
        await outbox.waiting('the decision to wait for the webhook outbox');
        const migrated = check.migrator.up({ to: THIS }).then(() => 'applied', (e: Error) => e.message);
        await waitFor(
          async () =>
            (await admin(
              `select count(*)::int as n from pg_locks l where l.database = (select oid from pg_database where datname = current_database()) and l.mode = 'AccessExclusiveLock' and not l.granted`,
            ))[0]!.n === 1,
          { what: 'the migration waiting for a table the decision holds' },
        );
        await outbox.release();
        // Before the fix the decision read the request's decisions before the run's checkpoints, the
        // migration took the checkpoints and waited for the decisions: PostgreSQL failed one of the two.
        expect(await decided).toBe('approved');
        expect(await migrated).toBe('applied');
      } finally {
        await outbox.close();
      }
      expect(await indexes()).toEqual(KEYED);
      expect(await admin(`select status from durable_runs where id = $1`, [run.id])).toEqual([{ status: 'running' }]);
    } finally {
      await admin(`alter table approval_requests drop column if exists policy_version`);
      await queue.close();
      redis.disconnect();
      await app.close(true);
      await check.close(true);
    }
  });
});
