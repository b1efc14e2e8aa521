/**
 * Real worker processes (test/helpers/test-worker.ts) started and stopped (SIGTERM) in the situations a
 * platform meets when it restarts or scales workers: while Redis is down (this file's own redis-server, stopped and
 * started again empty), and scaling down (SIGTERM to some of several workers on one queue). A worker
 * must exit 0 by itself — not be cut off at the hard deadline (WORKER_SHUTDOWN_GRACE + 10 s,
 * status 1) — and every run must complete, each step once.
 * The plain cases (a step finishing within the grace, one outlasting it) are in durable-recovery.test.ts.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { newTenant, startStack, type TestStack, type WorkerHandle } from '../helpers/stack.ts';
import { waitFor, within } from '../helpers/poll.ts';
import { freePort } from '../helpers/own-infra.ts';
import { heldProxy } from '../helpers/held-proxy.ts';
import { holdTable, type TableLock } from '../helpers/table-lock.ts';
import { slowWorkflow } from '../helpers/slow-workflow.ts';
import { createSlowRun, entered, enteredThroughLast, expectEveryStepOnce, jobOf, killLiveWorkers, logged, readRun, waitEntered, waitRun } from '../helpers/recovery.ts';
import type { RunRow } from '../../src/platform/durable/runtime.ts';
import { workerConnectionName } from '../../src/platform/queue/connections.ts';

/** The worker's JSON log lines (its output is nothing else: the first test checks). */
const logLines = (w: WorkerHandle): Array<Record<string, unknown>> =>
  w
    .output()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);

/** The stages its start has reached (`worker starting` at debug: StartStage in src/worker-runtime.ts). */
const startStages = (w: WorkerHandle) => logLines(w).filter((l) => l.msg === 'worker starting').map((l) => l.stage);

const TEST_WORKER = 'test/helpers/test-worker.ts';
const STOPPED_WITHOUT_REDIS = 'no job running and Redis unreachable: the workers stop without waiting for Redis';
const LONG = 120_000;

describe('a worker started or stopped while Redis is down (own redis-server)', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({ api: false, workerEntry: TEST_WORKER, extraWorkflows: [slowWorkflow()], ownRedis: true });
  });
  afterEach(async () => {
    await killLiveWorkers(stack);
    const redis = stack.ownRedis!;
    if ((await redis.client.ping().catch(() => '')) !== 'PONG') await redis.startServer();
    // The stack's own producer connection (no offline queue) reconnects with a backoff.
    await waitFor(() => stack.container.redis.status === 'ready', { what: "the stack's Redis connection" });
  });
  afterAll(async () => stack?.stop());

  it('a worker started while Redis is down waits for it without crashing, logging JSON only, then carries on the runs Redis lost', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const run = await createSlowRun(stack, tenant, { enqueue: true });
    await stack.ownRedis!.stopServer();
    const started = stack.spawnWorker({ GP_SLOW_STEP_MS: '0' });
    const worker = stack.workers.at(-1)!;
    // Two reconnection attempts of the worker's connections have failed: it waits, it has not exited.
    await waitFor(() => worker.output().split('ECONNREFUSED').length > 2, { what: 'the worker to try Redis' });
    expect(worker.proc.exitCode).toBeNull();
    await stack.ownRedis!.startServer();
    await started;
    const done = await waitRun(stack, tenant, run.id, ['completed', 'failed']);
    expect(done.status).toBe('completed');
    expectEveryStepOnce(done);
    // Every line is a structured log line (a platform's log drain parses them): no bare stack traces.
    expect(worker.output().split('\n').filter((l) => l !== '' && !l.startsWith('{'))).toEqual([]);
  });

  it('the production worker told to stop while it still waits for Redis at start stops waiting and exits 0, saying so', { timeout: LONG }, async () => {
    // A port nobody listens on: this worker never reaches Redis, so it never logs 'worker started'.
    void stack.spawnWorker({ REDIS_URL: `redis://127.0.0.1:${await freePort()}`, LOG_LEVEL: 'debug' }, { entry: 'workers/golden-path.worker.ts' }).catch(() => {});
    const worker = stack.workers.at(-1)!;
    // Its start waits for Redis before it records its decision in PostgreSQL: the signal lands there.
    await waitFor(() => startStages(worker).includes('redis') && worker.output().split('ECONNREFUSED').length > 2, { what: 'the worker to wait for Redis' });
    worker.kill('SIGTERM');
    expect(await worker.exited, worker.output().slice(-3000)).toBe(0);
    expect(worker.proc.signalCode).toBeNull();
    const lines = logLines(worker);
    const msgs = lines.map((l) => l.msg);
    expect(msgs.filter((m) => m === 'stopped before the worker had started (still waiting for Redis)')).toHaveLength(1);
    expect(msgs).not.toContain('worker started');
    expect(msgs.at(-1)).toBe('shut down cleanly');
    expect(worker.output().split('\n').filter((l) => l !== '' && !l.startsWith('{'))).toEqual([]);
  });

  it("the production worker told to stop while it waits for PostgreSQL at start (its release's migration not run) exits 0, saying it was recording its decision in PostgreSQL", { timeout: LONG }, async () => {
    // Redis is up; the table where a worker records its run-retention decision at start (ADR 0011) is not there.
    await stack.db.admin('alter table run_retention_decision rename to run_retention_decision_away');
    try {
      void stack.spawnWorker({}, { entry: 'workers/golden-path.worker.ts' }).catch(() => {});
      const worker = stack.workers.at(-1)!;
      await waitFor(() => worker.output().includes('npm run db:migrate') || undefined, { what: 'the worker to say its migration is missing' });
      worker.kill('SIGTERM');
      expect(await worker.exited, worker.output().slice(-3000)).toBe(0);
      const msgs = logLines(worker).map((l) => l.msg);
      expect(msgs.filter((m) => m === 'stopped before the worker had started (still recording its run-retention decision in PostgreSQL)')).toHaveLength(1);
      expect(msgs).not.toContain('worker started');
      expect(msgs.at(-1)).toBe('shut down cleanly');
    } finally {
      await stack.db.admin('alter table run_retention_decision_away rename to run_retention_decision');
    }
  });

  it('an idle worker whose Redis is down exits 0 without waiting out the grace, and says nothing was in flight', { timeout: LONG }, async () => {
    // A grace longer than the test's own timeout: a worker that waited it out would fail the test.
    const worker = await stack.spawnWorker({ WORKER_SHUTDOWN_GRACE: '5m' });
    await stack.ownRedis!.stopServer();
    // The worker has noticed: its reconnection is refused (a signal before that finds its connections still up, and they close).
    await waitFor(() => worker.output().includes('ECONNREFUSED'), { what: 'the worker to find Redis gone' });
    worker.kill('SIGTERM');
    expect(await worker.exited, worker.output().slice(-3000)).toBe(0);
    const msgs = logLines(worker).map((l) => l.msg);
    expect(msgs).toContain(STOPPED_WITHOUT_REDIS);
    // Nothing was in flight, so there was nothing to hand back or wait for.
    expect(msgs.filter((m) => /hand|did not (finish|close)|too long/.test(String(m)))).toEqual([]);
    expect(msgs.at(-1)).toBe('shut down cleanly');
  });

  it.each([
    { what: 'a step that finishes after the signal commits; its job cannot be handed back', gate: '0,sigterm', committed: 2 },
    { what: 'a step outlasting the grace is aborted and rolls back; its job cannot be handed back', gate: '0,hang', committed: 1 },
  ])('$what: the worker exits 0, and once Redis is back another worker completes the run', { timeout: LONG }, async ({ gate, committed }) => {
    const tenant = newTenant();
    const first = await stack.spawnWorker({ GP_SLOW_STEP_MS: gate, WORKER_SHUTDOWN_GRACE: '1s' });
    const run = await createSlowRun(stack, tenant, { enqueue: true });
    await waitEntered(first, run.id, 2);
    await stack.ownRedis!.stopServer();
    first.kill('SIGTERM');
    expect(await first.exited, first.output().slice(-3000)).toBe(0);
    expect((await readRun(stack, tenant, run.id)).sequence_num).toBe(committed);
    // Once its step has ended there is nothing left to wait for without Redis: it says so, not that it could not close.
    const msgs = logLines(first).map((l) => l.msg);
    expect(msgs).toContain(STOPPED_WITHOUT_REDIS);
    expect(msgs.filter((m) => /did not close/.test(String(m)))).toEqual([]);

    // Redis comes back empty: the sweeper of the next worker re-enqueues the run from its last checkpoint.
    await stack.ownRedis!.startServer();
    await stack.spawnWorker({ GP_SLOW_STEP_MS: '0' });
    const done = await waitRun(stack, tenant, run.id, ['completed', 'failed']);
    expect(done.status).toBe('completed');
    expectEveryStepOnce(done);
  });
});

describe('a worker stopped while it starts, Redis up (a roll that catches a worker just started)', () => {
  // Before: told that Redis was unreachable and that the start still waited for it, whatever it was
  // doing; its connections were cut off while still connecting, the maintenance queue opened after the
  // stop failed on the closed connection (`queue error: Stream isn't writeable…` after `shut down
  // cleanly`), and one stopped in PostgreSQL hung in the ORM's close until the hard deadline (exit 1).
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({ api: false });
  });
  afterEach(async () => killLiveWorkers(stack));
  afterAll(async () => stack?.stop());

  /** Exit 0 by itself; `stopped before the worker had started (still <where>)` once; nothing after `shut down cleanly`; no warning, error or bare line. */
  const expectStoppedWhileStarting = async (worker: WorkerHandle, where: string) => {
    expect(await worker.exited, worker.output().slice(-3000)).toBe(0);
    expect(worker.proc.signalCode).toBeNull();
    expect(worker.output().split('\n').filter((l) => l !== '' && !l.startsWith('{'))).toEqual([]);
    const lines = logLines(worker);
    const msgs = lines.map((l) => l.msg);
    expect(msgs.filter((m) => String(m).startsWith('stopped before the worker had started'))).toEqual([`stopped before the worker had started (still ${where})`]);
    expect(msgs).not.toContain('worker started');
    expect(msgs.at(-1)).toBe('shut down cleanly');
    // Not STOPPED_WITHOUT_REDIS, not `queue error`, `worker error` nor `workers did not close…`: Redis was up.
    expect(lines.filter((l) => Number(l.level) >= 40).map((l) => l.msg)).toEqual([]);
  };

  /** A production worker whose start waits for the run_retention_decision lock `lock` holds, SIGTERMed there. */
  const signalledInDecision = async (lock: TableLock) => {
    void stack.spawnWorker({}, { entry: 'workers/golden-path.worker.ts' }).catch(() => {});
    const worker = stack.workers.at(-1)!;
    await lock.waiting("the worker's start to wait for the run_retention_decision lock");
    worker.kill('SIGTERM');
    return worker;
  };

  it('held in PostgreSQL recording its run-retention decision: it finishes that statement, stops there and says so', { timeout: LONG }, async () => {
    const lock = await holdTable(stack.db.ownerUrl, 'run_retention_decision');
    try {
      const worker = await signalledInDecision(lock);
      await waitFor(() => logLines(worker).some((l) => l.msg === 'shutting down'), { what: "the worker's shutdown to begin" });
      await lock.release();
      await expectStoppedWhileStarting(worker, 'recording its run-retention decision in PostgreSQL');
    } finally {
      await lock.close();
    }
  });

  it('held in PostgreSQL by a lock that outlasts the hard deadline: it gives the statement up, exits 0 by itself and says where it was', { timeout: LONG }, async () => {
    // Before: the start finished the statement in flight, which waited for the lock until
    // DATABASE_STATEMENT_TIMEOUT (30 s) — past the hard deadline (WORKER_SHUTDOWN_GRACE + 10 s): exit 1.
    const lock = await holdTable(stack.db.ownerUrl, 'run_retention_decision');
    try {
      const worker = await signalledInDecision(lock);
      expect(await worker.exited, worker.output().slice(-3000)).toBe(0);
      const msgs = logLines(worker).map((l) => l.msg);
      expect(msgs.filter((m) => String(m).startsWith('stopped before the worker had started'))).toEqual(['stopped before the worker had started (still recording its run-retention decision in PostgreSQL)']);
      expect(msgs).not.toContain('shutdown took too long; exiting');
      expect(msgs.at(-1)).toBe('shut down cleanly');
    } finally {
      await lock.close();
    }
  });

  it('held waiting for Redis, its connections made but not answered yet: it stops waiting, its workers close once Redis answers, and it says where it was', { timeout: LONG }, async () => {
    const proxy = await heldProxy(stack.env.REDIS_URL!);
    try {
      void stack.spawnWorker({ REDIS_URL: proxy.url, LOG_LEVEL: 'debug' }, { entry: 'workers/golden-path.worker.ts' }).catch(() => {});
      const worker = stack.workers.at(-1)!;
      // Redis must answer within 5 s of the worker's first held command (its producer connection's
      // command timeout; later, `queue error: Command timed out`): the worker's log, written in batches
      // through a pipe, may come too late to time the signal and the release by. The proxy sees the
      // worker's own connection (CLIENT SETNAME dealix-worker-<instance>) arrive: it is opened after the
      // start has reached its wait for Redis and the shutdown handlers are installed (in one synchronous
      // run of startWorkerProcess and runWorkerProcess; ioredis connects on the next tick).
      await within(proxy.named(workerConnectionName('')), "the worker's own Redis connection");
      // Signalled before Redis can answer anything: the signal is pending before the proxy sends Redis a
      // byte, a process takes a pending signal before it reads what arrives after, and its handler stops
      // the start at once (runWorkerProcess) — while readiness needs more than Redis's first answer.
      worker.kill('SIGTERM');
      proxy.release();
      await expectStoppedWhileStarting(worker, 'waiting for Redis');
      // Stopped at its wait for Redis, not after it (the signal did land first): a start that had found
      // Redis ready would have gone on to record its run-retention decision in PostgreSQL.
      expect(startStages(worker)).toEqual(['redis']);
    } finally {
      await proxy.close();
    }
  });
});

describe('scaling down: SIGTERM to two of three workers on one queue while they carry runs', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({ api: false, workerEntry: TEST_WORKER, extraWorkflows: [slowWorkflow()] });
  });
  afterAll(async () => stack?.stop());

  it('their steps commit, their jobs go straight to the worker left (no lock to wait out), and every run completes with each step once', { timeout: LONG }, async () => {
    // The two to stop hold each run they take in step 2 until they are told to stop; the one left is quick.
    const stopping = [await stack.spawnWorker({ GP_SLOW_STEP_MS: '0,sigterm', WORKER_CONCURRENCY: '2' }), await stack.spawnWorker({ GP_SLOW_STEP_MS: '0,sigterm', WORKER_CONCURRENCY: '2' })];
    const left = await stack.spawnWorker({ GP_SLOW_STEP_MS: '100', WORKER_CONCURRENCY: '2' });
    const tenant = newTenant();
    const runs: RunRow[] = [];
    for (let i = 0; i < 10; i++) runs.push(await createSlowRun(stack, tenant, { enqueue: true }));
    // Both slots of both workers to stop hold a run in step 2.
    const held = (w: (typeof stopping)[number]) => runs.filter((r) => entered(w, r.id).includes(2));
    await waitFor(() => stopping.every((w) => held(w).length === 2), { timeoutMs: 60_000, what: 'the workers to stop to hold two runs each in step 2' });
    const handedBack = stopping.flatMap(held);

    for (const w of stopping) w.kill('SIGTERM');
    for (const w of stopping) expect(await w.exited, w.output().slice(-3000)).toBe(0);
    // Each finished its step 2 and handed the job back before step 3.
    const handBacks = stopping.flatMap((w) => handedBack.flatMap((r) => logged(w, r.id, 'worker stopping: job handed back before its next step')));
    expect(handBacks.map((l) => l.sequence_num)).toEqual([3, 3, 3, 3]);

    for (const run of runs) {
      const done = await waitRun(stack, tenant, run.id, ['completed', 'failed']);
      expect(done.status).toBe('completed');
      expectEveryStepOnce(done);
    }
    for (const run of handedBack) {
      // The worker left went on from step 3: step 2 was not run again.
      expect(await enteredThroughLast(left, run.id)).toEqual([3, 4]);
      // Handed back, not left for its lock to lapse: BullMQ never counted the job as stalled.
      expect((await jobOf(stack, run, 1))?.stalledCounter).toBe(0);
    }
  });

  it('a second SIGTERM while a step outlasts the grace: the worker exits 1 at once, saying so, and another worker completes the run, each step once', { timeout: LONG }, async () => {
    await killLiveWorkers(stack); // the previous test's worker would take the run
    // A grace longer than the test: only the second signal can end this worker in time.
    const stopping = await stack.spawnWorker({ GP_SLOW_STEP_MS: '0,hang', WORKER_SHUTDOWN_GRACE: '5m' });
    const tenant = newTenant();
    const run = await createSlowRun(stack, tenant, { enqueue: true });
    await waitEntered(stopping, run.id, 2);
    stopping.kill('SIGTERM');
    await waitFor(() => logLines(stopping).some((l) => l.msg === 'shutting down'), { what: "the worker's first shutdown line" });
    stopping.kill('SIGTERM');
    // Exited by itself with status 1, not killed by the signal (Node's default action once no listener is left).
    expect(await stopping.exited, stopping.output().slice(-3000)).toBe(1);
    expect(stopping.proc.signalCode).toBeNull();
    expect(logLines(stopping).at(-1)).toMatchObject({ level: 50, signal: 'SIGTERM', msg: 'second signal while shutting down: exiting at once, without finishing the shutdown' });

    // Its job's lock lapses and the worker left carries the run on from step 2's start; step 2 never committed.
    expect((await readRun(stack, tenant, run.id)).sequence_num).toBe(1);
    await stack.spawnWorker({ GP_SLOW_STEP_MS: '0' });
    const done = await waitRun(stack, tenant, run.id, ['completed', 'failed']);
    expect(done.status).toBe('completed');
    expectEveryStepOnce(done);
  });
});

describe('a worker whose start fails', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({ api: false });
  });
  afterAll(async () => stack?.stop());

  it('its metrics port already taken: one fatal JSON line and exit 1, the metrics server tried before any worker starts', { timeout: LONG }, async () => {
    const taken = createServer();
    await new Promise<void>((r) => taken.listen(0, () => r()));
    try {
      const port = (taken.address() as AddressInfo).port;
      void stack.spawnWorker({ WORKER_METRICS_PORT: String(port) }, { entry: 'workers/golden-path.worker.ts' }).catch(() => {});
      const worker = stack.workers.at(-1)!;
      expect(await worker.exited, worker.output().slice(-3000)).toBe(1);
      // Every line is a structured log line: not a bare stack trace thrown past the entry.
      expect(worker.output().split('\n').filter((l) => l !== '' && !l.startsWith('{'))).toEqual([]);
      const lines = logLines(worker);
      expect(lines.at(-1)).toMatchObject({ level: 60, msg: 'worker could not start', err: { code: 'EADDRINUSE' } });
      expect(lines.map((l) => l.msg)).not.toContain('worker started');
    } finally {
      taken.close();
    }
  });
});
