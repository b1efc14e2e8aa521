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
import { waitFor, within } from '../helpers/poll.ts';
import { CoalescingClient, NoAnswerError } from '../../src/platform/db/coalescing-client.ts';
import { pausableProxy } from '../helpers/held-proxy.ts';
import { slowWorkflow } from '../helpers/slow-workflow.ts';
import { SLOW_STEPS, createSlowRun, entered, expectEveryStepOnce, logged, killLiveWorkers, readRun, waitEntered, waitRun } from '../helpers/recovery.ts';

const TEST_WORKER = 'test/helpers/test-worker.ts';
const LONG = 180_000;
/** What the worker logs when a statement's answer did not come in time (coalescing-client.ts). */
const NO_ANSWER = 'PostgreSQL did not answer';

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
      // The same worker process carried the run on (no restart was needed).
      expect(entered(worker, run.id)).toContain(SLOW_STEPS.length);
      expect(worker.proc.exitCode).toBeNull();
      expect(worker.proc.signalCode).toBeNull();
    } finally {
      await proxy.close();
    }
  });

  it('the bound is per message, counted from now when nothing is unanswered: a busy connection that went silent is dropped after one bound, not one per message it sent before', { timeout: LONG }, async () => {
    const proxy = await pausableProxy(stack.env.DATABASE_URL!);
    const throughProxy = new URL(stack.env.DATABASE_URL!);
    throughProxy.host = new URL(proxy.url).host;
    // 1 s the server's, 1 s more the client's: a bound of 2 s per message of one statement.
    const client = new CoalescingClient({ connectionString: throughProxy.toString(), answerBound: { statementMs: 1_000, marginMs: 1_000 } });
    client.on('error', () => {});
    await client.connect();
    try {
      // 40 messages, each answered long before its bound.
      for (let i = 0; i < 40; i++) expect((await client.query('select $1::int as n', [i])).rows[0].n).toBe(i);
      proxy.pause();
      // Counted from the previous bound even once answered, the 41st message's bound lay 40 bounds
      // (80 s) out, past this deadline; counted from now it fails after 2 s.
      const failed = await within(
        client.query('select 1').then(
          () => undefined,
          (e: unknown) => e,
        ),
        "the silent connection's message to fail with its bound",
        20_000,
      );
      expect(failed).toBeInstanceOf(NoAnswerError);
    } finally {
      proxy.resume();
      await client.end().catch(() => {});
      await proxy.close();
    }
  });
});
