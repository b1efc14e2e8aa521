/**
 * A run's checkpoints follow its steps' order (ADR 0001, amendment "A step's checkpoint follows its
 * predecessor"): the application role writes checkpoints (it runs the steps), so a statement of its own — a
 * bug, or a compromised API or worker process — could write a later step's checkpoint ahead of the steps
 * between (checkpoint 4 naming an evidence pack of its making while step 2 still runs), which the run's next
 * job then replays instead of running them. A checkpoint a replay or a resume trusts is written only while its
 * run is active, within the run's steps, once the checkpoint before it completed; one that is not completed
 * becomes completed only as a decision's resume makes it. The forgeries connect as the application role
 * (row-level security in force); what the steps and the executor write still passes.
 */
import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { seedRun } from '../helpers/db.ts';
import { appRoleDatabase, asAppRole } from '../helpers/app-role-client.ts';
import { evidenceHash } from '../../src/modules/evidence/evidence.service.ts';

const suite = appRoleDatabase();

type Stmt = [sql: string, params: unknown[]];
const STEPS = ['partner-dossier', 'economics-model', 'approval-packet', 'evidence-pack'];

/** Runs `stmts` as the application role under `tenant`, in one transaction: the last one's row count, or the SQLSTATE it failed with. */
const asApp = (tenant: string, ...stmts: Stmt[]) => asAppRole(suite.app, tenant, stmts);

/** A golden-path run of `tenant` (4 steps) in `runStatus`, with one checkpoint per status given at sequence_num 1, 2, … (as the superuser: setup only). */
async function runWith(tenant: string, statuses: string[], runStatus = 'running'): Promise<string> {
  const run = await seedRun(suite.db, tenant);
  for (const [i, status] of statuses.entries()) {
    await suite.db.admin(
      `insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, output, attempt, created_at, updated_at, completed_at)
       values (gen_random_uuid(), $1, $2, $3, $4, $5, '{}'::jsonb, 1, now(), now(), case when $5 = 'completed' then now() end)`,
      [tenant, run, i + 1, STEPS[i] ?? `step-${i + 1}`, status],
    );
  }
  if (runStatus !== 'running') await suite.db.admin(`update durable_runs set status = $2, completed_at = case when $2 in ('pending', 'waiting') then null else now() end where id = $1`, [run, runStatus]);
  return run;
}

/** A step's checkpoint insert, as the steps write it (the fields that matter here). */
const checkpoint = (tenant: string, run: string, seq: number, status = 'completed', output: unknown = {}): Stmt => [
  `insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, output, attempt, created_at, updated_at, completed_at)
   values ($1, $2, $3, $4, $5, $6, $7::jsonb, 1, now(), now(), case when $6 = 'completed' then now() end)`,
  [randomUUID(), tenant, run, seq, STEPS[seq - 1] ?? `step-${seq}`, status, JSON.stringify(output)],
];

/** executor.ts markFailed's upsert of a step's failure. */
const failure = (tenant: string, run: string, seq: number): Stmt => [
  `insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, error, attempt, created_at, updated_at)
   values (gen_random_uuid(), $1, $2, $3, $4, 'failed', '{}'::jsonb, 1, now(), now())
   on conflict (tenant_id, run_id, sequence_num) do update set status = 'failed', error = excluded.error, attempt = excluded.attempt, updated_at = now()
   where durable_checkpoints.status <> 'completed'`,
  [tenant, run, seq, STEPS[seq - 1] ?? `step-${seq}`],
];

const stored = async (run: string) =>
  (await suite.db.admin(`select sequence_num, status from durable_checkpoints where run_id = $1 order by sequence_num`, [run])).rows.map((r) => [r.sequence_num, r.status]);

describe("a step's checkpoint is written only after the one before it completed", () => {
  it('the application role cannot write checkpoint 4 with an evidence pack of its making while step 2 still runs', async () => {
    const tenant = randomUUID();
    const run = await runWith(tenant, ['completed']);
    const content = { schema: 'dealix.evidence-pack/v1', run: { id: run, tenant_id: tenant }, outcome: 'approved' };
    const [packId, sha256] = [randomUUID(), evidenceHash(content)];
    const pack: Stmt = [`insert into evidence_packs (id, tenant_id, run_id, content, sha256, created_at) values ($1, $2, $3, $4::jsonb, $5, now())`, [packId, tenant, run, JSON.stringify(content), sha256]];
    expect(await asApp(tenant, pack, checkpoint(tenant, run, 4, 'completed', { evidence_pack_id: packId, sha256, outcome: 'approved' }))).toBe('42501');
    expect(await stored(run)).toEqual([[1, 'completed']]);
    expect((await suite.db.admin(`select count(*)::int as n from evidence_packs where id = $1`, [packId])).rows[0].n).toBe(0);
  });

  it.each([
    ['step 3 while step 2 runs', ['completed'], 3, 'completed'],
    ['a wait at step 3 while step 2 runs', ['completed'], 3, 'waiting'],
    ['step 3 while step 2 waits', ['completed', 'waiting'], 3, 'completed'],
    ['step 3 after step 2 failed', ['completed', 'failed'], 3, 'completed'],
    ['step 2 after step 1 only started', ['started'], 2, 'completed'],
    ['a started checkpoint ahead of its step', ['completed'], 3, 'started'],
  ])('nor %s (42501)', async (_what, before, seq, status) => {
    const tenant = randomUUID();
    const run = await runWith(tenant, before);
    expect(await asApp(tenant, checkpoint(tenant, run, seq, status))).toBe('42501');
    expect(await stored(run)).toEqual(before.map((s, i) => [i + 1, s]));
  });

  it("nor one outside the run's steps: sequence_num 0, or 5 of a four-step run", async () => {
    const tenant = randomUUID();
    const run = await runWith(tenant, ['completed', 'completed', 'completed', 'completed']);
    expect(await asApp(tenant, checkpoint(tenant, run, 0))).toBe('42501');
    expect(await asApp(tenant, checkpoint(tenant, run, 5))).toBe('42501');
    expect(await stored(run)).toHaveLength(4);
  });

  it.each(['cancelled', 'completed', 'failed'])('nor one of a %s run (DX001, as the run guard of a step\'s statement refuses it: the run no longer active, not the step failing); a failure (the executor\'s upsert) is still recorded there', async (runStatus) => {
    const tenant = randomUUID();
    const run = await runWith(tenant, ['completed'], runStatus);
    expect(await asApp(tenant, checkpoint(tenant, run, 2))).toBe('DX001');
    expect(await asApp(tenant, checkpoint(tenant, run, 2, 'waiting'))).toBe('DX001');
    // Ahead of its step too: refused all the same.
    expect(await asApp(tenant, checkpoint(tenant, run, 4))).toBe('DX001');
    // markFailed inserts the failure before it ends the run, which a cancel may have ended meanwhile.
    expect(await asApp(tenant, failure(tenant, run, 2))).toBe(1);
    expect(await stored(run)).toEqual([[1, 'completed'], [2, 'failed']]);
  });

  it('what the steps write passes: a first step, each step after the one before, a failure, a replay meets the key', async () => {
    const tenant = randomUUID();
    const run = await runWith(tenant, [], 'pending');
    expect(await asApp(tenant, checkpoint(tenant, run, 1))).toBe(1);
    await suite.db.admin(`update durable_runs set status = 'running' where id = $1`, [run]);
    expect(await asApp(tenant, checkpoint(tenant, run, 2))).toBe(1);
    // A step's failure, then its retry's success over it is refused by the key as before (the retry of a failed run deletes it first).
    expect(await asApp(tenant, failure(tenant, run, 3))).toBe(1);
    expect(await asApp(tenant, failure(tenant, run, 3))).toBe(1);
    // A re-delivered job's step whose checkpoint another execution committed: the unique violation it always met.
    expect(await asApp(tenant, checkpoint(tenant, run, 2))).toBe('23505');
    expect(await stored(run)).toEqual([[1, 'completed'], [2, 'completed'], [3, 'failed']]);
  });

  it("two tenants' steps in one transaction, each under its own tenant as a group commit sends them, pass; a forgery among them fails it", async () => {
    const [a, b] = [randomUUID(), randomUUID()];
    const [runA, runB] = [await runWith(a, ['completed']), await runWith(b, ['completed', 'completed'])];
    const members = async (stmts: Array<{ tenant: string; stmt: Stmt }>) => {
      await suite.app.query('begin');
      try {
        for (const m of stmts) {
          await suite.app.query(`select set_config('app.tenant_id', $1, true)`, [m.tenant]);
          await suite.app.query(m.stmt[0], m.stmt[1]);
        }
        await suite.app.query('commit');
        return 'committed';
      } catch (e) {
        await suite.app.query('rollback');
        return (e as { code?: string }).code;
      }
    };
    expect(await members([{ tenant: a, stmt: checkpoint(a, runA, 2) }, { tenant: b, stmt: checkpoint(b, runB, 3, 'waiting') }])).toBe('committed');
    // The checkpoint is checked under the statement's own tenant: B's step 2 after A's step 1 is B's run's.
    const runC = await runWith(b, []);
    expect(await members([{ tenant: a, stmt: checkpoint(a, runA, 3) }, { tenant: b, stmt: checkpoint(b, runC, 2) }])).toBe('42501');
    expect(await stored(runA)).toEqual([[1, 'completed'], [2, 'completed']]);
    expect(await stored(runB)).toEqual([[1, 'completed'], [2, 'completed'], [3, 'waiting']]);
  });

  it('the owner (migrations, repairs, fixtures) is not held to it', async () => {
    const tenant = randomUUID();
    const run = await runWith(tenant, []);
    const owner = new pg.Client({ connectionString: suite.db.ownerUrl });
    await owner.connect();
    try {
      await owner.query('begin');
      await owner.query(`select set_config('app.tenant_id', $1, true)`, [tenant]);
      await owner.query(...checkpoint(tenant, run, 3));
      await owner.query('commit');
    } finally {
      await owner.end();
    }
    expect(await stored(run)).toEqual([[3, 'completed']]);
  });
});

describe('a checkpoint that is not completed becomes completed only as a decision resumes its wait', () => {
  const complete = (run: string, seq: number): Stmt => [
    `update durable_checkpoints set status = 'completed', output = '{"approved":true}'::jsonb, completed_at = now(), updated_at = now() where run_id = $1 and sequence_num = $2`,
    [run, seq],
  ];

  it.each([
    ['a failed step', ['completed', 'failed'], 'running'],
    ['a started step', ['completed', 'started'], 'running'],
    ['a wait whose run is not waiting', ['completed', 'waiting'], 'running'],
    ['a wait of a cancelled run', ['completed', 'waiting'], 'cancelled'],
  ])('completing %s is refused (42501)', async (_what, before, runStatus) => {
    const tenant = randomUUID();
    const run = await runWith(tenant, before, runStatus);
    expect(await asApp(tenant, complete(run, 2))).toBe('42501');
    expect(await stored(run)).toEqual(before.map((s, i) => [i + 1, s]));
  });

  it("a wait's packet is not rewritten while it waits, nor a failure made a wait", async () => {
    const tenant = randomUUID();
    const run = await runWith(tenant, ['completed', 'waiting'], 'waiting');
    expect(await asApp(tenant, [`update durable_checkpoints set output = '{"approval_class":"A"}'::jsonb where run_id = $1 and sequence_num = 2`, [run]])).toBe('42501');
    const failed = await runWith(tenant, ['completed', 'failed']);
    expect(await asApp(tenant, [`update durable_checkpoints set status = 'waiting' where run_id = $1 and sequence_num = 2`, [failed]])).toBe('42501');
  });

  it('a waiting run\'s wait is completed (resume), or failed (the executor\'s upsert)', async () => {
    const tenant = randomUUID();
    const run = await runWith(tenant, ['completed', 'waiting'], 'waiting');
    expect(await asApp(tenant, complete(run, 2))).toBe(1);
    const other = await runWith(tenant, ['completed', 'waiting'], 'waiting');
    expect(await asApp(tenant, [`update durable_checkpoints set status = 'failed', error = '{}'::jsonb where run_id = $1 and sequence_num = 2`, [other]])).toBe(1);
    expect([await stored(run), await stored(other)]).toEqual([[[1, 'completed'], [2, 'completed']], [[1, 'completed'], [2, 'failed']]]);
  });
});
