/**
 * A PostgreSQL that stops answering without closing the connection (a host that vanished, a
 * partition, a failover that leaves the old address silent): nothing reaches the server, so its
 * statement_timeout never fires; only the client can give up. A TCP proxy in front of PostgreSQL
 * (test/helpers/held-proxy.ts) stops forwarding, both ways, while a step of a real worker process
 * (test/helpers/test-worker.ts) runs; the worker's Redis stays up, so its job's lock keeps being renewed
 * and neither BullMQ nor the sweeper sees anything wrong. Every assertion reads PostgreSQL directly
 * (not through the proxy), under the run's tenant.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { failureWithin, waitFor, within } from '../helpers/poll.ts';
import pg from 'pg';
import { CoalescingClient, DEFER_UNTIL_NEXT, NoAnswerError } from '../../src/platform/db/coalescing-client.ts';
import { pausableProxy, type PausableProxy } from '../helpers/held-proxy.ts';
import { slowWorkflow } from '../helpers/slow-workflow.ts';
import { SLOW_STEPS, createSlowRun, enteredThroughLast, expectEveryStepOnce, logged, killLiveWorkers, readRun, waitEntered, waitRun } from '../helpers/recovery.ts';

const TEST_WORKER = 'test/helpers/test-worker.ts';
const LONG = 180_000;
/** What the worker logs when a statement's answer did not come in time (coalescing-client.ts). */
const NO_ANSWER = 'PostgreSQL did not answer';

/**
 * A CoalescingClient to `url` through a pausable proxy: PostgreSQL's statement_timeout 1 s, the
 * client's margin `marginMs` (1 s) more. `close` forwards again and ends both.
 */
async function silenceable(url: string, perStatement = false, marginMs = 1_000) {
  const proxy = await pausableProxy(url);
  const throughProxy = new URL(url);
  throughProxy.host = new URL(proxy.url).host;
  const client = new CoalescingClient({ connectionString: throughProxy.toString(), statement_timeout: 1_000, answerBound: { statementMs: 1_000, marginMs, perStatement } });
  client.on('error', () => {});
  const close = async () => {
    proxy.resume();
    await client.end().catch(() => {});
    await proxy.close();
  };
  await client.connect().catch(async (e: unknown) => {
    await close();
    throw e;
  });
  return { proxy, client, close };
}

/** What `query` fails with (undefined if it succeeds), within 20 s: a bound of a few seconds is expected, one summed over many statements or messages is not. */
const failureWithin20s = (query: Promise<unknown>, what: string): Promise<unknown> => failureWithin(query, what, 20_000);

/**
 * Holds 40 statements that may wait on `client` (what a grouped commit of a dozen steps sends:
 * group-commit.ts), to go in one message with the next: `begin`, 39 held ones, then the caller's.
 */
async function heldForty(client: CoalescingClient): Promise<void> {
  await client.query('begin');
  for (let i = 0; i < 39; i++) await client.query(`${DEFER_UNTIL_NEXT}select $1::int as n`, [i]);
  expect(client.pendingStatements).toHaveLength(40);
}

/**
 * One message of `count` statements, each waiting on an advisory lock the test holds for 1.5 s of that
 * statement's wait (pg_locks.waitstart, read by the server's clock), sent by a CoalescingClient whose
 * bounds are the server's statement_timeout 4 s and a margin of 1 s: it must be answered. Returns the
 * client, ended. `around`: the client connects to `url` (a proxy's) with `config` added, and `meanwhile`
 * runs from when the message is sent (awaited before its answer is read).
 */
async function answeredWhileEachWaits(
  url: string,
  count: number,
  perStatement: boolean,
  around: { url?: string; config?: pg.ClientConfig; meanwhile?: () => Promise<void> } = {},
): Promise<CoalescingClient> {
  const LOCKS = Array.from({ length: count }, (_, i) => 7_700_001 + i);
  const holder = new pg.Client({ connectionString: url });
  const client = new CoalescingClient({ connectionString: around.url ?? url, ...around.config, statement_timeout: 4_000, answerBound: { statementMs: 4_000, marginMs: 1_000, perStatement } });
  client.on('error', () => {});
  await holder.connect();
  await client.connect();
  try {
    for (const k of LOCKS) await holder.query('select pg_advisory_lock($1)', [k]);
    await client.query('begin');
    for (const k of LOCKS.slice(0, -1)) await client.query(`${DEFER_UNTIL_NEXT}select pg_advisory_xact_lock($1)`, [k]);
    const sent = client.query('select pg_advisory_xact_lock($1) as last', [LOCKS.at(-1)]).then(
      (r: pg.QueryResult) => r,
      (e: unknown) => e,
    );
    const meanwhile = around.meanwhile?.();
    for (const k of LOCKS) {
      await waitFor(
        async () =>
          (await holder.query(`select 1 from pg_locks where locktype = 'advisory' and not granted and objid = $1 and clock_timestamp() - waitstart >= interval '1500 ms'`, [k])).rowCount === 1,
        { timeoutMs: 30_000, what: `the message to have waited 1.5 s for lock ${k}` },
      );
      await holder.query('select pg_advisory_unlock($1)', [k]);
    }
    await meanwhile;
    const answer = await within(sent, 'the long message to be answered', 60_000);
    expect(answer).not.toBeInstanceOf(Error);
    expect((answer as pg.QueryResult).rows).toEqual([{ last: '' }]);
    await client.query('commit');
    return client;
  } finally {
    await holder.end().catch(() => {});
    await client.end().catch(() => {});
  }
}

describe('a PostgreSQL that stops answering without closing the connection', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({ api: false, workerEntry: TEST_WORKER, extraWorkflows: [slowWorkflow()] });
  });
  afterEach(async () => killLiveWorkers(stack));
  afterAll(async () => stack?.stop());

  it("a step's statement that gets no answer fails its connection past the bound, as a transient failure; once PostgreSQL answers again the same worker completes the run, each step once", { timeout: LONG }, async () => {
    const tenant = newTenant();
    const proxy = await pausableProxy(stack.env.DATABASE_URL!);
    // The worker's DATABASE_URL, its host the proxy's (user, password, database kept).
    const throughProxy = new URL(stack.env.DATABASE_URL!);
    throughProxy.host = new URL(proxy.url).host;
    try {
      // Short bounds, so the test is quick: a statement is given 1 s by the server, the client waits 1 s more.
      // Step 2 waits a moment inside its transaction before its statements: the proxy goes silent then.
      const worker = await stack.spawnWorker({
        DATABASE_URL: throughProxy.toString(),
        DATABASE_POOL_MAX: '3',
        DATABASE_STATEMENT_TIMEOUT: '1s',
        DATABASE_ANSWER_MARGIN: '1s',
        GP_SLOW_STEP_MS: '0,3000,0',
      });
      const run = await createSlowRun(stack, tenant, { enqueue: true });
      await waitEntered(worker, run.id, 2);
      proxy.pause();
      // Without a client-side bound the step's statement waits for ever (the run stays `running`, the
      // worker keeps its job); with it, the connection is dropped and the step's attempt fails.
      // The step's attempt fails on the bound as a transient failure (retried, not failing the run): step
      // 2's (or, on a machine slow enough that step 2 was through before the pause, a later one's). Other
      // parts of the worker (its sweeper) give up on their statements too; the step's failure is the one awaited.
      const stepGaveUp = () =>
        [...logged(worker, run.id, 'step failed; BullMQ retries it with backoff'), ...logged(worker, run.id, 'step kept failing on infrastructure; the run stays incomplete for the sweeper')].some(
          (j) => Number(j.sequence_num) >= 2 && JSON.stringify(j.err).includes(NO_ANSWER),
        );
      await waitFor(stepGaveUp, { timeoutMs: 60_000, what: "the step to give up on PostgreSQL's answer" });
      expect((await readRun(stack, tenant, run.id)).status).toBe('running');
      proxy.resume();
      const done = await waitRun(stack, tenant, run.id, ['completed', 'failed'], 120_000);
      expect(done.status).toBe('completed');
      expectEveryStepOnce(done);
      // The step's next execution ran it again or, when the message that timed out had reached the proxy
      // and PostgreSQL committed it once forwarding resumed, found its checkpoint: either way once (above).
      // The same worker process carried the run on (no restart was needed). Its log line for the last step
      // can trail the commit it describes (logs are written in batches): read once it is there.
      expect(await enteredThroughLast(worker, run.id)).toContain(SLOW_STEPS.length);
      expect(worker.proc.exitCode).toBeNull();
      expect(worker.proc.signalCode).toBeNull();
    } finally {
      await proxy.close();
    }
  });

  it('the bound is per message, counted from now when nothing is unanswered: a busy connection that went silent is dropped after one bound, not one per message it sent before', { timeout: LONG }, async () => {
    // 1 s the server's, 1 s more the client's: a bound of 2 s per message of one statement.
    const { proxy, client, close } = await silenceable(stack.env.DATABASE_URL!);
    try {
      // 40 messages, each answered long before its bound.
      for (let i = 0; i < 40; i++) expect((await client.query('select $1::int as n', [i])).rows[0].n).toBe(i);
      proxy.pause();
      // Counted from the previous bound even once answered, the 41st message's bound lay 40 bounds
      // (80 s) out, past this deadline; counted from now it fails after 2 s.
      const failed = await failureWithin20s(client.query('select 1'), "the silent connection's message to fail with its bound");
      expect(failed).toBeInstanceOf(NoAnswerError);
    } finally {
      await close();
    }
  });
  it("with the bound per statement (DATABASE_ANSWER_PER_STATEMENT), a long message that went silent is dropped one statement's bound after its last answer, not one bound per statement in it (a group commit's message carries dozens)", { timeout: LONG }, async () => {
    // 1 s the server's per statement, 1 s more the client's.
    const { proxy, client, close } = await silenceable(stack.env.DATABASE_URL!, true);
    try {
      await heldForty(client);
      proxy.pause();
      // Summed per statement, the bound was 40 s + 1 s, past this deadline; PostgreSQL runs a
      // message's statements one after the other, each within its statement_timeout of the one
      // before, so silence for one statement's bound (2 s) is enough to know it is gone.
      const failed = await failureWithin20s(client.query('select 39 as n'), "the silent connection's long message to fail with its bound");
      expect(failed).toBeInstanceOf(NoAnswerError);
      expect((failed as Error).message).toContain('within 2000 ms');
    } finally {
      await close();
    }
  });

  it('with the bound per statement, a long message whose statements each wait, but each within its statement_timeout, is never cut: the bound restarts at each answer', { timeout: LONG }, async () => {
    // The server's statement_timeout 4 s, the client's margin 1 s: silent for 5 s is too long. The message
    // waits in 5 statements, each 1.5 s or more: 7.5 s or more in all, each far within 4 s.
    await answeredWhileEachWaits(stack.env.DATABASE_URL!, 5, true);
  });

  it("by default, a long message whose connection went silent while the server takes new connections is dropped after one statement's bound and a liveness check that finds its backend idle, not after one bound per statement in it", { timeout: LONG }, async () => {
    // This connection only: the liveness check's own connection, made afterwards, is forwarded. After one
    // statement's bound of silence (1 s + a margin of 3 s here, which the check has to connect and read,
    // however loaded the machine) the client asks PostgreSQL on a fresh connection about this
    // connection's backend: idle for longer than the margin, the message never reached it.
    await longMessageDroppedAfterCheck((proxy) => proxy.pauseOpen(), /liveness check.*idle/, 3_000);
  });

  it("by default, a long message to a server gone silent altogether is dropped after one statement's bound and a liveness check that gets no answer within that bound", { timeout: LONG }, async () => {
    // Every connection, this one and the check's, made through the same address.
    await longMessageDroppedAfterCheck((proxy) => proxy.pause(), /liveness check.*no answer/);
  });

  /**
   * The 40 statements of heldForty in one message, sent once `silence` stopped the proxy: dropped well
   * before the summed bound (40 s + the margin, past the deadline) after one liveness check that found
   * it dead (`seen`).
   */
  async function longMessageDroppedAfterCheck(silence: (proxy: PausableProxy) => void, seen: RegExp, marginMs?: number): Promise<void> {
    const { proxy, client, close } = await silenceable(stack.env.DATABASE_URL!, false, marginMs);
    try {
      await heldForty(client);
      silence(proxy);
      const failed = await failureWithin20s(client.query('select 39 as n'), "the silent connection's long message to fail after a liveness check");
      expect(failed).toBeInstanceOf(NoAnswerError);
      expect((failed as Error).message).toMatch(seen);
      expect(client.livenessChecks).toEqual({ working: 0, unsure: 0, dead: 1, unknown: 0, ignored: 0 });
    } finally {
      await close();
    }
  }

  it('by default, a long message whose statements each wait, in all past one statement\'s bound, is never cut: the liveness check finds its backend at work', { timeout: LONG }, async () => {
    // The same bounds (5 s), 8 statements waiting 1.5 s or more each: 12 s or more of silence, so at least
    // one check finds the backend waiting on a lock; the sum (8 × 4 s + 1 s) is never reached.
    const client = await answeredWhileEachWaits(stack.env.DATABASE_URL!, 8, false);
    expect(client.livenessChecks.working).toBeGreaterThan(0);
    // Not `unsure: 0`: a check that reads the backend just done, its reading processed before the answer
    // that left first (two sockets, either read first), finds it idle for less than the margin — harmless
    // (asked again after the margin, by when the answer is in); what must not be is a drop (above) or dead.
    expect(client.livenessChecks).toMatchObject({ dead: 0, unknown: 0 });
  });

  it("by default, a long message whose backend is at work is not cut when the server is slow to take the liveness check's connection: the check has one statement's bound to connect and read, not the pool's connect bound", { timeout: LONG }, async () => {
    // The client's connect bound 500 ms (the pool's is CONNECTION_BOUNDS' 5 s). The check made after one
    // statement's bound of silence (5 s) gets a connection the server takes only after 1.5 s (held by
    // the proxy: a fork or an authentication under load), then finds the backend waiting on a lock.
    const proxy = await pausableProxy(stack.env.DATABASE_URL!);
    const url = new URL(stack.env.DATABASE_URL!);
    url.host = new URL(proxy.url).host;
    try {
      const client = await answeredWhileEachWaits(stack.env.DATABASE_URL!, 8, false, {
        url: url.toString(),
        config: { connectionTimeoutMillis: 500 },
        meanwhile: async () => {
          proxy.holdNew();
          await waitFor(() => proxy.heldSince !== undefined && Date.now() - proxy.heldSince >= 1_500, { timeoutMs: 60_000, what: "the liveness check's connection to have been held 1.5 s" });
          proxy.resume();
        },
      });
      expect(client.livenessChecks.working).toBeGreaterThan(0);
      expect(client.livenessChecks.dead).toBe(0);
    } finally {
      proxy.resume();
      await proxy.close();
    }
  });

  it("a liveness check whose reading comes after the message was answered is ignored, and counted as such (not as what it found): the connection stays usable and the check's connection ends", { timeout: LONG }, async () => {
    const LOCK = 7_700_100;
    const proxy = await pausableProxy(stack.env.DATABASE_URL!);
    const url = new URL(stack.env.DATABASE_URL!);
    url.host = new URL(proxy.url).host;
    const holder = new pg.Client({ connectionString: stack.env.DATABASE_URL! });
    // The client's bound 3 s + 1 s (the server's statement_timeout longer, so that the lock wait outlasts
    // it): after 4 s of silence a check, whose connection the proxy holds while the message is answered.
    const client = new CoalescingClient({ connectionString: url.toString(), statement_timeout: 60_000, answerBound: { statementMs: 3_000, marginMs: 1_000, perStatement: false } });
    client.on('error', () => {});
    await holder.connect();
    await client.connect();
    try {
      await holder.query('select pg_advisory_lock($1)', [LOCK]);
      await client.query('begin');
      await client.query(`${DEFER_UNTIL_NEXT}select pg_advisory_xact_lock($1)`, [LOCK]);
      // 40 statements that may wait: the sum (2 min) is never what ends the wait here.
      for (let i = 0; i < 38; i++) await client.query(`${DEFER_UNTIL_NEXT}select $1::int as n`, [i]);
      proxy.holdNew();
      const sent = client.query('select 1 as last') as Promise<pg.QueryResult>;
      await waitFor(() => proxy.heldSince !== undefined, { timeoutMs: 30_000, what: "the liveness check's connection" });
      await holder.query('select pg_advisory_unlock($1)', [LOCK]);
      expect((await within(sent, 'the message to be answered', 30_000)).rows).toEqual([{ last: 1 }]);
      proxy.resume();
      await waitFor(() => Object.values(client.livenessChecks).some((n) => n > 0), { timeoutMs: 30_000, what: 'the check to end' });
      expect(client.livenessChecks).toEqual({ working: 0, unsure: 0, dead: 0, unknown: 0, ignored: 1 });
      await client.query('commit');
      await waitFor(
        async () => (await holder.query(`select 1 from pg_stat_activity where application_name = 'dealix liveness check' and datname = current_database()`)).rowCount === 0,
        { timeoutMs: 30_000, what: "the check's connection to end" },
      );
    } finally {
      proxy.resume();
      await holder.end().catch(() => {});
      await client.end().catch(() => {});
      await proxy.close();
    }
  });

  it("ending a connection whose server went silent is done after the margin: pg's end waited for the server to close it, for ever (a pool's close at shutdown, db:migrate's at its end)", { timeout: LONG }, async () => {
    const { proxy, client, close } = await silenceable(stack.env.DATABASE_URL!);
    try {
      expect((await client.query('select 1 as n')).rows).toEqual([{ n: 1 }]);
      proxy.pause();
      expect(await failureWithin20s(client.end(), 'the end of the silent connection')).toBeUndefined();
    } finally {
      await close();
    }
  });

  it("a pool's close ends its idle connections to a silent server after the margin too: pg-pool ends each with pg's callback form of end, and a socket left waiting for the server's close kept the process (db:migrate, db:check) from exiting", { timeout: LONG }, async () => {
    const proxy = await pausableProxy(stack.env.DATABASE_URL!);
    const throughProxy = new URL(stack.env.DATABASE_URL!);
    throughProxy.host = new URL(proxy.url).host;
    // The ORM's pool (orm.ts): pg's Pool with the CoalescingClient, 1 s the server's, 1 s more the client's.
    const pool = new pg.Pool({ Client: CoalescingClient, connectionString: throughProxy.toString(), answerBound: { statementMs: 1_000, marginMs: 1_000 } } as pg.PoolConfig);
    pool.on('error', () => {});
    try {
      const client = await pool.connect();
      client.on('error', () => {});
      const ended = new Promise<void>((resolve) => client.once('end', () => resolve()));
      expect((await client.query('select 1 as n')).rows).toEqual([{ n: 1 }]);
      client.release();
      proxy.pause();
      await pool.end();
      // pg-pool's end does not wait for its clients' ends; the connection's socket is what is left open.
      expect(await failureWithin20s(ended, "the pooled connection's end")).toBeUndefined();
    } finally {
      proxy.resume();
      await proxy.close();
    }
  });
});
