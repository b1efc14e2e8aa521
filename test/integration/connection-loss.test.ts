/**
 * PostgreSQL connection loss in the middle of a step (docs/runtime.md, "Recovery paths"): an
 * administrator terminates the worker's backends (`pg_terminate_backend`, as a failover, a pooler
 * restart or an idle-session reaper would) while a step's body runs. The production worker host and
 * executor run the golden path in this process, each step behind a barrier the test holds; the API
 * runs in this process too; PostgreSQL as the application role, Redis.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, CLASS_A_SUBMISSION, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { barrier, startRunHost, wrappedGoldenPath } from '../helpers/run-host.ts';
import { TEST_APP } from '../helpers/env.ts';

const LONG = 120_000;
const DOMAIN_TABLES = ['partner_dossiers', 'economics_models', 'approval_requests', 'evidence_packs'];

describe('PostgreSQL connections terminated while a step runs', () => {
  let stack: TestStack;
  const tenant = newTenant();
  let submitter: string;
  let approver: string;
  const hosts: Array<{ stop(): Promise<void> }> = [];

  beforeAll(async () => {
    stack = await startStack();
    submitter = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
    approver = await stack.token({ tenantId: tenant, sub: 'approver-1', roles: ['approver'] });
  }, LONG);
  afterEach(async () => {
    while (hosts.length) await hosts.pop()!.stop();
  });
  afterAll(async () => stack?.stop());

  /** Runs the golden path here; the first entry of step `seq` of each run waits at `held` until the test releases it. */
  function host(seq: number) {
    const held = barrier();
    const entered: number[] = [];
    const wf = wrappedGoldenPath(stack, (step, s) => async (input, ctx) => {
      entered.push(s);
      if (s === seq && entered.filter((e) => e === seq).length === 1) {
        held.enter();
        await held.released;
      }
      return step.run(input, ctx);
    });
    hosts.push(startRunHost(stack, wf, `conn-loss-${randomUUID().slice(0, 8)}`));
    return { held, entered };
  }

  async function submit(body: unknown): Promise<string> {
    const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token: submitter, body, headers: { 'Idempotency-Key': randomUUID() } });
    expect(res.status, res.text).toBe(202);
    return res.json.run_id as string;
  }
  const waitStatus = (id: string, statuses: string[]) =>
    waitFor(
      async () => {
        const r = (await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token: submitter })).json;
        return statuses.includes(r?.status) ? r : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 50, what: `run ${id} to reach ${statuses.join('|')}` },
    );
  /** Terminates every backend of the application role in this test's database (the worker's and the API's): what an administrator's pg_terminate_backend does. */
  async function terminateAppBackends(): Promise<number> {
    const { rows } = await stack.db.admin(
      `select count(*) filter (where pg_terminate_backend(pid))::int as n from pg_stat_activity where datname = current_database() and usename = $1`,
      [TEST_APP.user],
    );
    return rows[0].n as number;
  }
  /**
   * Connections of the stack's pool (the API's and the run host's) checked out and not given back. A
   * connection the server terminated must leave the pool with its transaction's end: one never given
   * back is lost for good — the pool serves one transaction fewer at a time, and `pool.end()` at
   * shutdown waits for it forever.
   */
  async function checkedOut(): Promise<number> {
    const pool = (await stack.container.orm.em.getDriver().getConnection().getNativeClient()) as { totalCount: number; idleCount: number };
    return pool.totalCount - pool.idleCount;
  }
  async function expectOnceEach(id: string) {
    const { rows: cps } = await stack.db.admin(`select sequence_num, status from durable_checkpoints where run_id = $1 order by sequence_num`, [id]);
    expect(cps).toEqual([1, 2, 3, 4].map((n) => ({ sequence_num: n, status: 'completed' })));
    for (const table of DOMAIN_TABLES) {
      expect((await stack.db.admin(`select count(*)::int as n from ${table} where run_id = $1`, [id])).rows[0].n, table).toBe(1);
    }
  }

  it("a step's connection terminated while its body runs: the step is run again, the run completes with one checkpoint and one row per step", { timeout: LONG }, async () => {
    const { held, entered } = host(2);
    const id = await submit(CLASS_A_SUBMISSION);
    await held.inside;
    expect(await terminateAppBackends()).toBeGreaterThan(0);
    held.release();
    expect((await waitStatus(id, ['completed', 'failed'])).status).toBe('completed');
    await expectOnceEach(id);
    expect(entered.filter((s) => s === 2)).toHaveLength(2);
    await waitFor(async () => (await checkedOut()) === 0, { what: 'every connection back in the pool' });
  });

  it("a resumed run's step whose transaction had read the run, its backend terminated mid-transaction: run again, one evidence pack", { timeout: LONG }, async () => {
    const { held, entered } = host(4);
    const id = await submit(SAMPLE_SUBMISSION); // class B: waits at step 3
    const waiting = await waitStatus(id, ['waiting', 'failed']);
    expect(waiting.status).toBe('waiting');
    const decided = await api(stack, 'POST', `/api/v1/approvals/${waiting.steps[2].output.approval_request_id}/decision`, {
      token: approver,
      body: { decision: 'approve' },
      headers: { 'Idempotency-Key': randomUUID() },
    });
    expect(decided.status, decided.text).toBe(200);
    // The resume's job reads the run first: its transaction is open on a backend while step 4's body runs.
    await held.inside;
    const { rows } = await stack.db.admin(`select count(*)::int as n from pg_stat_activity where datname = current_database() and usename = $1 and state = 'idle in transaction'`, [TEST_APP.user]);
    expect(rows[0].n).toBeGreaterThan(0);
    expect(await terminateAppBackends()).toBeGreaterThan(0);
    held.release();
    expect((await waitStatus(id, ['completed', 'failed'])).status).toBe('completed');
    await expectOnceEach(id);
    expect(entered.filter((s) => s === 4)).toHaveLength(2);
    await waitFor(async () => (await checkedOut()) === 0, { what: 'every connection back in the pool' });
  });
});
