import { beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { SYSTEM_ROLE } from '../../src/platform/db/tenant-owned.ts';
import { seedRun, type TestDatabase } from '../helpers/db.ts';
import { appRoleDatabase, asAppRole } from '../helpers/app-role-client.ts';

/**
 * A step's completed checkpoint is the record a resumed run replays and evidence relies on (ADR 0001,
 * amendment "Checkpoints are history"): the application role, even under the run's own tenant, can
 * neither delete it (directly, or through its run's cascade) nor rewrite it, while what the code does
 * — a retry dropping its failed step's checkpoint, a waiting checkpoint completed by its decision, a
 * failure recorded over a started one, retention as the system role — still works.
 */
const suite = appRoleDatabase();
let db: TestDatabase;
beforeAll(() => void ({ db } = suite));

/** Runs `sql` as the application role under `tenant`, in a transaction of its own; its row count, or the SQLSTATE it failed with. */
const asApp = (tenant: string, sql: string, params: unknown[] = [], role?: string): Promise<number | string> => asAppRole(suite.app, tenant, [[sql, params]], role);

/** A run of `tenant` with one checkpoint per status given, at sequence_num 1, 2, … (as the superuser: setup only). */
async function runWith(tenant: string, statuses: string[]): Promise<string> {
  const run = await seedRun(db, tenant);
  for (const [i, status] of statuses.entries()) {
    await db.admin(
      `insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, output, attempt, created_at, updated_at, completed_at)
       values (gen_random_uuid(), $1, $2, $3, $4, $5, $6::jsonb, 1, now(), now(), case when $5 = 'completed' then now() end)`,
      [tenant, run, i + 1, `step-${i + 1}`, status, status === 'completed' ? JSON.stringify({ sha256: 'a'.repeat(64) }) : null],
    );
  }
  return run;
}

async function checkpoints(run: string): Promise<{ sequence_num: number; status: string; output: unknown; step_name: string }[]> {
  return (await db.admin(`select sequence_num, status, output, step_name from durable_checkpoints where run_id = $1 order by sequence_num`, [run])).rows;
}

describe('completed checkpoints as the application role', () => {
  it("deleting its own tenant's completed checkpoint removes nothing; its failed one (what a retry drops) is deleted", async () => {
    const tenant = randomUUID();
    const run = await runWith(tenant, ['completed', 'failed']);
    expect(await asApp(tenant, `delete from durable_checkpoints where run_id = $1 and sequence_num = 1`, [run])).toBe(0);
    expect(await asApp(tenant, `delete from durable_checkpoints where run_id = $1`, [run])).toBe(1);
    expect((await checkpoints(run)).map((c) => [c.sequence_num, c.status])).toEqual([[1, 'completed']]);
  });

  it('deleting its run is refused (42501): the cascade would take every checkpoint with it, completed ones included', async () => {
    const tenant = randomUUID();
    const run = await runWith(tenant, ['completed']);
    await db.admin(`update durable_runs set status = 'completed', completed_at = now() where id = $1`, [run]);
    expect(await asApp(tenant, `delete from durable_runs where id = $1`, [run])).toBe('42501');
    expect(await checkpoints(run)).toHaveLength(1);
  });

  it("rewriting a completed checkpoint's output or status is refused (42501); completing a waiting one with its output (a decision's resume) is not", async () => {
    const tenant = randomUUID();
    const run = await runWith(tenant, ['completed', 'waiting']);
    // Waiting for its decision, as a resume finds it (its completion is held to that: checkpoint-order.test.ts).
    await db.admin(`update durable_runs set status = 'waiting' where id = $1`, [run]);
    const forged = JSON.stringify({ sha256: 'f'.repeat(64) });
    expect(await asApp(tenant, `update durable_checkpoints set output = $2::jsonb, updated_at = now() where run_id = $1 and sequence_num = 1`, [run, forged])).toBe('42501');
    expect(await asApp(tenant, `update durable_checkpoints set status = 'failed' where run_id = $1 and sequence_num = 1`, [run])).toBe('42501');
    expect(await asApp(tenant, `update durable_checkpoints set status = 'completed', output = $2::jsonb, completed_at = now(), updated_at = now() where run_id = $1 and sequence_num = 2 and status = 'waiting'`, [run, '{"approved":true}'])).toBe(1);
    // Once completed, the resumed step's checkpoint is history too.
    expect(await asApp(tenant, `update durable_checkpoints set output = $2::jsonb where run_id = $1 and sequence_num = 2`, [run, forged])).toBe('42501');
    expect((await checkpoints(run)).map((c) => [c.status, c.output])).toEqual([['completed', { sha256: 'a'.repeat(64) }], ['completed', { approved: true }]]);
  });

  it('recording a failure over a started checkpoint (the executor\'s upsert) works; over a completed one it writes nothing and raises nothing', async () => {
    const tenant = randomUUID();
    const run = await runWith(tenant, ['completed', 'started']);
    const upsert = `insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, error, attempt, created_at, updated_at)
         values (gen_random_uuid(), $1, $2, $3, $4, 'failed', '{}'::jsonb, 2, now(), now())
         on conflict (tenant_id, run_id, sequence_num) do update set status = 'failed', error = excluded.error, attempt = excluded.attempt, updated_at = now()
         where durable_checkpoints.status <> 'completed'`;
    expect(await asApp(tenant, upsert, [tenant, run, 1, 'step-1'])).toBe(0);
    expect(await asApp(tenant, upsert, [tenant, run, 2, 'step-2'])).toBe(1);
    expect((await checkpoints(run)).map((c) => c.status)).toEqual(['completed', 'failed']);
  });

  it("a checkpoint's identity (its step, sequence_num, run) is never updated: refused (42501)", async () => {
    const tenant = randomUUID();
    const run = await runWith(tenant, ['started']);
    for (const set of [`step_name = 'other'`, 'sequence_num = 7', 'created_at = now()', 'run_id = run_id']) {
      expect(await asApp(tenant, `update durable_checkpoints set ${set} where run_id = $1`, [run]), set).toBe('42501');
    }
    expect(await checkpoints(run)).toMatchObject([{ sequence_num: 1, step_name: 'step-1' }]);
  });

  it('what a run was asked and by whom (input, principal, workflow) is never updated: refused (42501); its progress is', async () => {
    const tenant = randomUUID();
    const run = await runWith(tenant, []);
    for (const set of [`input = '{"amount":1}'::jsonb`, `principal = 'mallory'`, `workflow = 'other'`, 'workflow_version = 2', `idempotency_hash = 'x'`, 'created_at = now()']) {
      expect(await asApp(tenant, `update durable_runs set ${set} where id = $1`, [run]), set).toBe('42501');
    }
    expect(await asApp(tenant, `update durable_runs set status = 'failed', error = '{}'::jsonb, completed_at = now(), updated_at = now() where id = $1`, [run])).toBe(1);
  });

  it('an ended run is history: rewriting its status, output, error or end is refused (42501) for every ended status; retrying a failed one (failed → running or pending) is not', async () => {
    const tenant = randomUUID();
    for (const status of ['completed', 'failed', 'rejected', 'approval_expired', 'cancelled']) {
      const run = await runWith(tenant, ['completed']);
      await db.admin(`update durable_runs set status = $2, output = '{"pack":"a"}'::jsonb, completed_at = now() where id = $1`, [run, status]);
      for (const set of [`status = 'completed'`, `output = '{"pack":"forged"}'::jsonb`, `error = '{}'::jsonb`, 'completed_at = now()', 'updated_at = now()', `status = 'waiting'`]) {
        expect(await asApp(tenant, `update durable_runs set ${set} where id = $1`, [run]), `${status}: ${set}`).toBe('42501');
      }
      if (status !== 'failed') {
        expect(await asApp(tenant, `update durable_runs set status = 'running', completed_at = null where id = $1`, [run]), `${status} → running`).toBe('42501');
      }
      const [row] = (await db.admin(`select status, output from durable_runs where id = $1`, [run])).rows;
      expect(row, status).toEqual({ status, output: { pack: 'a' } });
    }
    // What runtime.retry writes: a failed run back to running (or pending, when no step completed).
    for (const next of ['running', 'pending']) {
      const run = await runWith(tenant, []);
      await db.admin(`update durable_runs set status = 'failed', error = '{"code":"x"}'::jsonb, completed_at = now() where id = $1`, [run]);
      expect(await asApp(tenant, RETRY, [run, next, JSON.stringify({ retry: 1, retried_by: 'admin-1', error: { code: 'x' } })]), next).toBe(1);
    }
  });

  /** runtime.retry's update of the run: its failure appended to retry_history (the newest 20 kept), retry_count up by one. */
  const RETRY = `update durable_runs set status = $2, error = null, completed_at = null, updated_at = now(), retry_count = retry_count + 1,
      retry_history = jsonb_path_query_array(coalesce(retry_history, '[]'::jsonb) || jsonb_build_array($3::jsonb), '$[last - 19 to last]') where id = $1`;

  it("a failed run's failure is kept by its retry: a move back to running that erases it, forges it or shortens the history is refused (42501); runtime.retry's, at the history's cap too, is not", async () => {
    const tenant = randomUUID();
    const failed = async (history: unknown[] | null, retryCount: number) => {
      const run = await runWith(tenant, ['completed', 'failed']);
      await db.admin(`update durable_runs set status = 'failed', error = '{"code":"boom"}'::jsonb, completed_at = now(), retry_count = $2, retry_history = $3::jsonb where id = $1`, [run, retryCount, history && JSON.stringify(history)]);
      return run;
    };
    const entry = (retry: number, error: unknown = { code: 'boom' }) => ({ retry, retried_by: 'admin-1', error });
    const older = [entry(1, { code: 'first' }), entry(2, { code: 'second' })];
    const run = await failed(older, 2);
    const forgeries: Array<[string, string, unknown[]]> = [
      ['the failure erased', `update durable_runs set status = 'running', error = null, retry_history = null, retry_count = 0 where id = $1`, [run]],
      ['retry_count not raised by one', `update durable_runs set status = 'running', error = null, retry_history = $2::jsonb where id = $1`, [run, JSON.stringify([...older, entry(3)])]],
      ['retry_count raised by two', `update durable_runs set status = 'running', error = null, retry_count = 4, retry_history = $2::jsonb where id = $1`, [run, JSON.stringify([...older, entry(4)])]],
      ['no entry for the retry', `update durable_runs set status = 'running', error = null, retry_count = 3 where id = $1`, [run]],
      ['another failure recorded', `update durable_runs set status = 'running', error = null, retry_count = 3, retry_history = $2::jsonb where id = $1`, [run, JSON.stringify([...older, entry(3, { code: 'harmless' })])]],
      ['the older entries dropped', `update durable_runs set status = 'running', error = null, retry_count = 3, retry_history = $2::jsonb where id = $1`, [run, JSON.stringify([entry(3)])]],
      ['an older entry rewritten', `update durable_runs set status = 'running', error = null, retry_count = 3, retry_history = $2::jsonb where id = $1`, [run, JSON.stringify([entry(1, { code: 'fine' }), older[1], entry(3)])]],
      ['an output written', `update durable_runs set status = 'running', error = null, retry_count = 3, output = '{"pack":"forged"}'::jsonb, retry_history = $2::jsonb where id = $1`, [run, JSON.stringify([...older, entry(3)])]],
    ];
    for (const [what, sql, params] of forgeries) expect(await asApp(tenant, sql, params), what).toBe('42501');
    const [row] = (await db.admin(`select status, error, retry_count, retry_history from durable_runs where id = $1`, [run])).rows;
    expect(row).toEqual({ status: 'failed', error: { code: 'boom' }, retry_count: 2, retry_history: older });
    expect(await asApp(tenant, RETRY, [run, 'running', JSON.stringify(entry(3))])).toBe(1);
    // At the cap (20 kept), the oldest entry goes: a history of the same length is the retry's, one shorter is not.
    const full = Array.from({ length: 20 }, (_, i) => entry(i + 1, { code: `f${i + 1}` }));
    const capped = await failed(full, 20);
    expect(await asApp(tenant, `update durable_runs set status = 'running', error = null, retry_count = 21, retry_history = $2::jsonb where id = $1`, [capped, JSON.stringify([...full.slice(2), entry(21)])])).toBe('42501');
    expect(await asApp(tenant, RETRY, [capped, 'running', JSON.stringify(entry(21))])).toBe(1);
    expect((await db.admin(`select retry_history from durable_runs where id = $1`, [capped])).rows[0].retry_history).toEqual([...full.slice(1), entry(21)]);
  });

  it('run retention (the system role) still deletes a run that ended longer ago than the floor, its completed checkpoints with it (on delete cascade)', async () => {
    const tenant = randomUUID();
    const run = await runWith(tenant, ['completed', 'completed']);
    await db.admin(`update durable_runs set status = 'completed', completed_at = now() - interval '25 hours', updated_at = now() - interval '25 hours' where id = $1`, [run]);
    expect(await asApp('', `delete from durable_runs where id = $1`, [run], SYSTEM_ROLE)).toBe(1);
    expect(await checkpoints(run)).toEqual([]);
  });
});

/**
 * The application role is a member of the system role (it reaches it by SET LOCAL ROLE, for the sweeper
 * and run retention): a statement of the application could take that role and delete every tenant's
 * ended runs, or record a retention of a millisecond that every worker's pass then applies (ADR 0011,
 * amendment "A floor under retention"). Neither deletes a run that ended less than a day ago.
 */
describe('run retention has a floor the application role cannot lower', () => {
  it('the system role, taken by the application role, deletes no run that ended less than 24 hours ago: the run and its checkpoints stay', async () => {
    const tenant = randomUUID();
    const run = await runWith(tenant, ['completed', 'completed']);
    await db.admin(`update durable_runs set status = 'completed', completed_at = now() - interval '23 hours', updated_at = now() - interval '23 hours' where id = $1`, [run]);
    expect(await asApp('', `delete from durable_runs where status = 'completed'`, [], SYSTEM_ROLE)).toBe(0);
    expect(await checkpoints(run)).toHaveLength(2);
  });

  it('a recorded retention under 24 hours is refused (23514); 0 (off) and 24 hours or more are recorded', async () => {
    const record = (ms: number) =>
      asApp('', `insert into run_retention_decision as d (id, retention_ms, decided_by, generation, decided_at) values (1, $1, 'worker', 1, now())
                 on conflict (id) do update set retention_ms = excluded.retention_ms, generation = d.generation + 100`, [ms]);
    for (const ms of [1, 1000, 24 * 3_600_000 - 1]) expect(await record(ms), String(ms)).toBe('23514');
    for (const ms of [0, 24 * 3_600_000, 90 * 86_400_000]) expect(await record(ms), String(ms)).toBe(1);
  });
});
