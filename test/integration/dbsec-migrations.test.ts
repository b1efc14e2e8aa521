/**
 * The three migrations of session dbsec on a database that has history, as an upgrade meets them:
 * `trigger_functions_search_path` (every trigger function with a fixed search_path),
 * `run_retention_floor` (the system role's delete policy keeps an ended run 24 hours; a recorded
 * decision under that, which config allowed before with a short IDEMPOTENCY_TTL, is raised to it) and
 * `retry_keeps_its_failure` (a failed run goes back to running only as runtime.retry moves it). A run
 * that failed before them, its retry history already full, is retried by runtime.retry after them (the
 * trigger and the retry's update agree on an existing row); the history's erasure is refused; the schema
 * then matches the entities with nothing pending (db:check). Down and up again too.
 */
import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { pino } from 'pino';
import { z } from 'zod';
import { createOrm } from '../../src/platform/db/orm.ts';
import { schemaStatus, migrate } from '../../src/platform/db/migrate.ts';
import { entities } from '../../src/entities.ts';
import { migrateUpTo, migrationTestDatabase } from '../helpers/migrations.ts';
import { systemEm, tenantEm } from '../../src/platform/db/tenant-em.ts';
import { DurableRuntime, RUN_COLUMNS, type RunRow } from '../../src/platform/durable/runtime.ts';
import { defineStep, defineWorkflow } from '../../src/platform/durable/workflow.ts';

const PREVIOUS = 'Migration20261206081149_token_revocations_not_empty';
const THESE = ['Migration20261206081500_trigger_functions_search_path', 'Migration20261206081600_run_retention_floor', 'Migration20261206083116_retry_keeps_its_failure'];
const FUNCTIONS = ['approval_policies_record_version_fn', 'approval_policy_versions_is_the_policy_fn', 'durable_checkpoints_completed_is_history_fn', 'durable_runs_ended_is_history_fn', 'evidence_packs_seal_fn'];

const database = migrationTestDatabase();
const admin = database.admin;

const WF = 'dbsec-upgrade';
const step = (name: string) => defineStep({ name, input: z.any(), output: z.any(), run: async () => ({}) });
const wf = defineWorkflow({ name: WF, version: 1, tag: WF, queue: WF, input: z.any(), steps: [step('first'), step('second')] });

/** A run as the release before stored it, `endedAgo` ago; a failed one with its first step completed and its second failed. */
async function seedRun(tenant: string, status: 'completed' | 'failed', endedAgo: string, extra: { error?: unknown; retryCount?: number; history?: unknown[] } = {}): Promise<string> {
  const id = randomUUID();
  await admin(
    `insert into durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, correlation_id, step_count, sequence_num,
                               created_at, updated_at, completed_at, error, retry_count, retry_history)
     values ($1, $2, $3, 1, $4, $5, 'submitter-1', '{}', 'c', 2, $6, now() - $7::interval - interval '1 minute', now() - $7::interval, now() - $7::interval, $8::jsonb, $9, $10::jsonb)`,
    [id, tenant, WF, randomUUID().replaceAll('-', ''), status, status === 'failed' ? 1 : 2, endedAgo, extra.error === undefined ? null : JSON.stringify(extra.error), extra.retryCount ?? 0, extra.history ? JSON.stringify(extra.history) : null],
  );
  await admin(
    `insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, output, error, attempt, created_at, updated_at, completed_at)
     values (gen_random_uuid(), $1, $2, 1, 'first', 'completed', '{}', null, 1, now(), now(), now()),
            (gen_random_uuid(), $1, $2, 2, 'second', $3, $4::jsonb, $5::jsonb, 3, now(), now(), $6::timestamptz)`,
    [tenant, id, status, status === 'completed' ? '{}' : null, status === 'failed' ? JSON.stringify({ code: 'boom' }) : null, status === 'completed' ? new Date().toISOString() : null],
  );
  return id;
}

describe('migrations trigger_functions_search_path, run_retention_floor, retry_keeps_its_failure on an existing database', () => {
  it('raise a decision under the floor, keep runs ended less than a day ago from the system role, let runtime.retry retry a run that failed before them (its history full), refuse its erasure; db:check clean; down and up again', async () => {
    const pending = await migrateUpTo(database.config, PREVIOUS);
    expect(pending).toEqual(expect.arrayContaining(THESE));
    expect(pending[0]).toBe(THESE[0]);
    const tenant = randomUUID();
    // What a worker of the release before recorded with RUN_RETENTION=2h and IDEMPOTENCY_TTL=2h (config allowed it).
    await admin(`insert into run_retention_decision (id, retention_ms, decided_by, generation, decided_at) values (1, 7200000, 'worker-old', 3, now())`);
    const recent = await seedRun(tenant, 'completed', '2 hours');
    const old = await seedRun(tenant, 'completed', '2 days');
    const error = { code: 'step_failed', step: 'second', sequence_num: 2, ratio: 0.1 + 0.2, note: 'e\u0301 \u2028 \u{1F600}' };
    const full = Array.from({ length: 20 }, (_, i) => ({ retry: i + 6, retried_by: 'admin-1', error: { code: `f${i + 6}` }, failed_at: null, attempts: 3, retried_at: new Date().toISOString() }));
    const failed = await seedRun(tenant, 'failed', '3 hours', { error, retryCount: 25, history: full });
    const erased = await seedRun(tenant, 'failed', '3 hours', { error: { code: 'boom' }, retryCount: 1, history: [full[0]] });

    expect(await migrate(database.config, entities)).toEqual(pending);
    expect(await admin(`select retention_ms::float8 as ms, generation::int as generation from run_retention_decision`)).toEqual([{ ms: 86_400_000, generation: 3 }]);
    expect(await admin(`select proname, proconfig from pg_proc where proname = any($1) order by proname`, [FUNCTIONS])).toEqual(
      FUNCTIONS.map((proname) => ({ proname, proconfig: ['search_path=pg_catalog, public, pg_temp'] })),
    );

    const app = await createOrm(database.config, { entities, poolMax: 1 });
    try {
      // The application role through the system role: the run ended two days ago goes, the one ended two hours ago stays.
      const deleted = await systemEm(app).transactional((tx) => tx.execute<{ id: string }[]>(`delete from durable_runs where status = 'completed' returning id`));
      expect(deleted.map((r) => r.id)).toEqual([old]);
      expect(await admin(`select count(*)::int as n from durable_checkpoints where run_id = $1`, [recent])).toEqual([{ n: 2 }]);

      // The retry of a run that failed before the migration, as the API makes it: accepted by the trigger.
      const runtime = new DurableRuntime({ workflows: [wf], queues: new Map(), logger: pino({ level: 'silent' }) });
      const retried = await tenantEm(app, tenant).transactional(async (tx) => {
        const [run] = await tx.execute<RunRow[]>(`select ${RUN_COLUMNS} from durable_runs where id = ? for update`, [failed]);
        return runtime.retry(tx, run!, { retriedBy: 'admin-2' });
      });
      expect(retried).toMatchObject({ status: 'running', retry_count: 26, error: null });
      const [row] = await admin(`select retry_history from durable_runs where id = $1`, [failed]);
      const history = row!.retry_history as Array<Record<string, unknown>>;
      expect(history).toHaveLength(20);
      expect(history.slice(0, 19)).toEqual(full.slice(1));
      expect(history[19]).toMatchObject({ retry: 26, retried_by: 'admin-2', error, attempts: 3 });

      // Its erasure, which passed before the migration, is refused.
      const erase = tenantEm(app, tenant).transactional((tx) => tx.execute(`update durable_runs set status = 'running', error = null, retry_history = null, retry_count = 0 where id = ?`, [erased], 'run'));
      await expect(erase).rejects.toMatchObject({ code: '42501' });
    } finally {
      await app.close(true);
    }

    const check = await createOrm(database.config, { entities, role: 'owner', poolMax: 1 });
    try {
      expect(await schemaStatus(check)).toEqual({ pending: [], drift: '' });
      await check.migrator.down({ to: PREVIOUS });
      expect(await admin(`select qual from pg_policies where policyname = 'durable_runs_system_retention'`)).toEqual([{ qual: expect.not.stringContaining('interval') }]);
      expect(await admin(`select count(*)::int as n from pg_proc where proname = any($1) and proconfig is not null`, [FUNCTIONS])).toEqual([{ n: 0 }]);
      await check.migrator.up();
      expect(await admin(`select qual from pg_policies where policyname = 'durable_runs_system_retention'`)).toEqual([{ qual: expect.stringContaining("'24:00:00'::interval") }]);
      expect(await schemaStatus(check)).toEqual({ pending: [], drift: '' });
    } finally {
      await check.close(true);
    }
  });

  // The trigger compares the entry's error with the row's in PostgreSQL; the retry copied it through
  // JavaScript (a double), so an error jsonb holds more exactly than a double — a hand repair, or any
  // writer but this code — made the run unretryable: every retry 42501, forever.
  it("runtime.retry records the failure as the row holds it: a run whose error has numbers no double holds is retried, not refused", async () => {
    await migrate(database.config, entities);
    const tenant = randomUUID();
    const run = await seedRun(tenant, 'failed', '1 hour');
    await admin(`update durable_runs set error = '{"code": "boom", "amount": 12345678901234567890123, "ratio": 0.1000000000000000000001}'::jsonb where id = $1`, [run]);
    const app = await createOrm(database.config, { entities, poolMax: 1 });
    try {
      const runtime = new DurableRuntime({ workflows: [wf], queues: new Map(), logger: pino({ level: 'silent' }) });
      const retried = await tenantEm(app, tenant).transactional(async (tx) => {
        const [row] = await tx.execute<RunRow[]>(`select ${RUN_COLUMNS} from durable_runs where id = ? for update`, [run]);
        return runtime.retry(tx, row!, { retriedBy: 'admin-1' });
      });
      expect(retried).toMatchObject({ status: 'running', retry_count: 1 });
      expect(await admin(`select retry_history -> 0 -> 'error' = '{"code": "boom", "amount": 12345678901234567890123, "ratio": 0.1000000000000000000001}'::jsonb as exact from durable_runs where id = $1`, [run])).toEqual([{ exact: true }]);
    } finally {
      await app.close(true);
    }
  });
});
