import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pino from 'pino';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { startStack, type TestStack } from '../helpers/stack.ts';
import { TEST_REDIS_URL } from '../helpers/env.ts';
import { capturedLog } from '../helpers/log-capture.ts';
import { freePort } from '../helpers/own-infra.ts';
import { waitFor } from '../helpers/poll.ts';
import { createRedis } from '../../src/platform/queue/connections.ts';
import { stackSweeper } from '../helpers/recovery.ts';
import {
  IDEMPOTENCY_EXPIRY_JOB,
  MAINTENANCE_QUEUE,
  RUN_RETENTION_JOB,
  readRetentionDecision,
  recordRetentionDecision,
  repairRunRetentionSchedule,
  repairStandingSchedulers,
  restoreMaintenanceSchedulers,
  scheduleMaintenance,
  upsertMaintenanceSchedulers,
} from '../../src/platform/queue/maintenance.ts';
import { WEBHOOK_REDELIVERY_JOB } from '../../src/platform/webhooks/delivery.ts';

/**
 * The sweeper notices that Redis lost its data by a marker key's absence, and then repairs what only
 * Redis held (waiting runs' timers, the maintenance Job Schedulers: `afterRedisLoss`). A loss while
 * that repair runs, or a repair that fails, must be noticed by the next sweep — else the schedulers
 * stay gone until a worker restarts.
 */
let stack: TestStack;
beforeAll(async () => {
  stack = await startStack({ api: false });
});
afterAll(async () => {
  await stack?.stop();
});

function sweeperWith(name: string, afterRedisLoss: () => Promise<void>) {
  return stackSweeper(stack, name, { afterRedisLoss });
}

describe('the sweeper\'s Redis-loss marker', () => {
  it('a loss while the repair runs is noticed by the next sweep', async () => {
    const marker = `${stack.prefix}:marker-loss:marker`;
    let repairs = 0;
    const sweeper = sweeperWith('marker-loss', async () => {
      repairs++;
      // Redis loses its data again at this moment (only the marker matters here: a flush takes it too).
      if (repairs === 1) await stack.container.redis.del(marker);
    });
    expect((await sweeper.sweep()).redisLost).toBe(true);
    expect((await sweeper.sweep()).redisLost).toBe(true);
    expect(repairs).toBe(2);
    expect((await sweeper.sweep()).redisLost).toBe(false);
    expect(repairs).toBe(2);
  });

  it('a repair that fails is tried again by the next sweep', async () => {
    let repairs = 0;
    const sweeper = sweeperWith('marker-fail', async () => {
      repairs++;
      if (repairs === 1) throw new Error('Redis went away while the schedulers were re-created');
    });
    await expect(sweeper.sweep()).rejects.toThrow(/went away/);
    expect((await sweeper.sweep()).redisLost).toBe(true);
    expect(repairs).toBe(2);
    expect((await sweeper.sweep()).redisLost).toBe(false);
  });
});

/**
 * What the repair (afterRedisLoss → restoreMaintenanceSchedulers) puts back when Redis kept some of
 * the schedulers: the idempotency-expiry one there but the webhook-redelivery one gone (keys lost one
 * by one, a Redis restored from a snapshot older than that scheduler, or an older release's worker
 * started after a flush, which upserts only the schedulers it knows). The schedulers no worker
 * removes come back; the run-retention schedule is the last-started worker's (ADR 0011) and stays.
 */
describe("the sweeper's repair when Redis kept some of the maintenance schedulers", () => {
  it('puts back a scheduler no worker removes that Redis lost while idempotency-expiry stayed, and leaves a removed run-retention schedule removed', async () => {
    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
    const queue = new Queue(MAINTENANCE_QUEUE, { connection, prefix: `${stack.prefix}-partial` });
    try {
      await upsertMaintenanceSchedulers(queue, { runRetentionMs: 0 });
      await queue.removeJobScheduler(WEBHOOK_REDELIVERY_JOB);
      expect((await queue.getJobSchedulers()).map((s) => s.key)).toEqual([IDEMPOTENCY_EXPIRY_JOB]);
      await restoreMaintenanceSchedulers(queue, { runRetentionMs: 30 * 86_400_000 });
      expect((await queue.getJobSchedulers()).map((s) => s.key).sort()).toEqual([IDEMPOTENCY_EXPIRY_JOB, WEBHOOK_REDELIVERY_JOB].sort());
      expect(await queue.getJobScheduler(RUN_RETENTION_JOB)).toBeUndefined();
    } finally {
      await queue.close();
      connection.disconnect();
    }
  });
});

describe("the webhook redelivery pass's interval (WEBHOOK_REDELIVERY_INTERVAL)", () => {
  it("is the worker's setting at start and at the repair after a Redis loss; without one, the smaller of the maintenance interval and a minute", async () => {
    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
    const queue = new Queue(MAINTENANCE_QUEUE, { connection, prefix: `${stack.prefix}-redelivery` });
    const every = async () => (await queue.getJobScheduler(WEBHOOK_REDELIVERY_JOB))?.every;
    try {
      await upsertMaintenanceSchedulers(queue, { runRetentionMs: 0 });
      expect(await every()).toBe(60_000);
      await upsertMaintenanceSchedulers(queue, { runRetentionMs: 0, everyMs: 20_000 });
      expect(await every()).toBe(20_000);
      await upsertMaintenanceSchedulers(queue, { runRetentionMs: 0, webhookRedeliveryMs: 5_000 });
      expect(await every()).toBe(5_000);
      await queue.removeJobScheduler(WEBHOOK_REDELIVERY_JOB);
      await restoreMaintenanceSchedulers(queue, { runRetentionMs: 0, webhookRedeliveryMs: 7_000 });
      expect(await every()).toBe(7_000);
    } finally {
      await queue.obliterate({ force: true });
      await queue.close();
      connection.disconnect();
    }
  });
});

describe("the sweeper's repair of a standing scheduler whose schedule was changed in Redis", () => {
  // Bull Board (before it refused the edit), redis-cli or a script may change a standing scheduler's
  // interval: a webhook redelivery pass every 30 days leaves pending deliveries whose job Redis lost
  // undelivered for a month. The repair at every sweep puts back the worker's settings, not only a
  // scheduler that is gone.
  it("re-upserts a standing scheduler whose interval or pattern differs from the worker's settings, and leaves matching ones alone", async () => {
    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
    const queue = new Queue(MAINTENANCE_QUEUE, { connection, prefix: `${stack.prefix}-changed` });
    const schedule = { webhookRedeliveryMs: 7_000 };
    const schedulers = async () => Object.fromEntries((await queue.getJobSchedulers()).map((s) => [s.key, { every: s.every, pattern: s.pattern }]));
    const expected = { [IDEMPOTENCY_EXPIRY_JOB]: { every: 10 * 60_000, pattern: undefined }, [WEBHOOK_REDELIVERY_JOB]: { every: 7_000, pattern: undefined } };
    try {
      await upsertMaintenanceSchedulers(queue, { runRetentionMs: 0, ...schedule });
      expect(await schedulers()).toEqual(expected);
      expect(await repairStandingSchedulers(queue, schedule)).toEqual([]);
      await queue.upsertJobScheduler(WEBHOOK_REDELIVERY_JOB, { every: 30 * 86_400_000 }, { name: WEBHOOK_REDELIVERY_JOB, data: {} });
      expect(await repairStandingSchedulers(queue, schedule)).toEqual([WEBHOOK_REDELIVERY_JOB]);
      expect(await schedulers()).toEqual(expected);
      await queue.upsertJobScheduler(IDEMPOTENCY_EXPIRY_JOB, { pattern: '0 0 1 1 *' }, { name: IDEMPOTENCY_EXPIRY_JOB, data: {} });
      expect(await repairStandingSchedulers(queue, schedule)).toEqual([IDEMPOTENCY_EXPIRY_JOB]);
      expect(await schedulers()).toEqual(expected);
    } finally {
      await queue.obliterate({ force: true });
      await queue.close();
      connection.disconnect();
    }
  });
});

/**
 * The run-retention schedule is Redis's copy of a decision PostgreSQL holds (run_retention_decision,
 * ADR 0011): each worker records its RUN_RETENTION at start (the worker started last decides), then
 * upserts the scheduler (or, off, removes it) carrying the decision's generation. Before, nothing
 * outside Redis held the decision, so the repair could not tell a scheduler lost alone (keys lost one
 * by one, a snapshot restored from before it) from one a worker with retention off removed: it put the
 * schedule back only when idempotency-expiry was gone too, and then with the sweeping worker's own
 * RUN_RETENTION, whatever a worker started after it had decided.
 */
describe('the run-retention schedule, a copy of the decision PostgreSQL holds', () => {
  const DAY = 86_400_000;
  /** What a worker's start does (scheduleMaintenance): its decision recorded, then copied to the scheduler. */
  async function workerStarts(queue: Queue, runRetentionMs: number, scheduledBy: string) {
    const decision = await recordRetentionDecision(stack.container.orm, { retentionMs: runRetentionMs, decidedBy: scheduledBy });
    await upsertMaintenanceSchedulers(queue, { runRetentionMs, scheduledBy, decision });
    return decision;
  }
  async function withQueue(name: string, fn: (queue: Queue) => Promise<void>) {
    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
    const queue = new Queue(MAINTENANCE_QUEUE, { connection, prefix: `${stack.prefix}-${name}` });
    try {
      await fn(queue);
    } finally {
      await queue.obliterate({ force: true });
      await queue.close();
      connection.disconnect();
    }
  }
  const retentionData = async (queue: Queue) => (await queue.getJobScheduler(RUN_RETENTION_JOB))?.template?.data;

  it('a run-retention scheduler lost alone comes back with the retention of the worker started last, not the sweeping worker\'s', async () => {
    await withQueue('alone', async (queue) => {
      await workerStarts(queue, 30 * DAY, 'worker-a');
      const b = await workerStarts(queue, 60 * DAY, 'worker-b');
      // Lost alone: idempotency-expiry and webhook-redelivery stay (and the marker: no loss is noticed).
      await queue.removeJobScheduler(RUN_RETENTION_JOB);
      expect((await queue.getJobSchedulers()).map((s) => s.key).sort()).toEqual([IDEMPOTENCY_EXPIRY_JOB, WEBHOOK_REDELIVERY_JOB].sort());
      // The repair after a noticed loss, in worker a (its own 30d)…
      expect(await restoreMaintenanceSchedulers(queue, { runRetentionMs: 30 * DAY, scheduledBy: 'worker-a', orm: stack.container.orm })).toBe('restored');
      expect(await retentionData(queue)).toEqual({ retention_ms: 60 * DAY, scheduled_by: 'worker-b', decision: b.generation });
      // …and every sweep's, with the marker kept.
      await queue.removeJobScheduler(RUN_RETENTION_JOB);
      expect(await repairRunRetentionSchedule(queue, stack.container.orm)).toBe('restored');
      expect(await retentionData(queue)).toEqual({ retention_ms: 60 * DAY, scheduled_by: 'worker-b', decision: b.generation });
      expect(await repairRunRetentionSchedule(queue, stack.container.orm)).toBe('kept');
    });
  });

  it('a worker started last with RUN_RETENTION off: after Redis lost every maintenance key the standing schedulers come back, the run-retention one does not', async () => {
    await withQueue('off', async (queue) => {
      await workerStarts(queue, 30 * DAY, 'worker-a');
      await workerStarts(queue, 0, 'worker-b');
      expect(await queue.getJobScheduler(RUN_RETENTION_JOB)).toBeUndefined();
      const keys = await stack.redis.keys(`${stack.prefix}-off:${MAINTENANCE_QUEUE}:*`);
      if (keys.length) await stack.redis.del(...keys);
      expect(await queue.getJobSchedulers()).toEqual([]);
      expect(await restoreMaintenanceSchedulers(queue, { runRetentionMs: 30 * DAY, scheduledBy: 'worker-a', orm: stack.container.orm })).toBe('kept');
      expect((await queue.getJobSchedulers()).map((s) => s.key).sort()).toEqual([IDEMPOTENCY_EXPIRY_JOB, WEBHOOK_REDELIVERY_JOB].sort());
    });
  });

  it("a scheduler copying an older decision (a snapshot restored) is replaced, or removed when the last decision is off; an older release's scheduler, which copies none, is kept", async () => {
    await withQueue('stale', async (queue) => {
      const a = await workerStarts(queue, 30 * DAY, 'worker-a');
      const b = await workerStarts(queue, 60 * DAY, 'worker-b');
      // Redis restored from a snapshot taken before worker b started.
      await upsertMaintenanceSchedulers(queue, { runRetentionMs: 30 * DAY, scheduledBy: 'worker-a', decision: a });
      expect(await repairRunRetentionSchedule(queue, stack.container.orm)).toBe('restored');
      expect(await retentionData(queue)).toEqual({ retention_ms: 60 * DAY, scheduled_by: 'worker-b', decision: b.generation });

      // A worker of the release before, started since: it records nothing, and may be the one started last.
      await upsertMaintenanceSchedulers(queue, { runRetentionMs: 45 * DAY, scheduledBy: 'worker-old' });
      expect(await repairRunRetentionSchedule(queue, stack.container.orm)).toBe('kept');
      expect(await retentionData(queue)).toEqual({ retention_ms: 45 * DAY, scheduled_by: 'worker-old' });

      // The last decision is off; the snapshot holds b's schedule.
      await workerStarts(queue, 0, 'worker-c');
      await upsertMaintenanceSchedulers(queue, { runRetentionMs: 60 * DAY, scheduledBy: 'worker-b', decision: b });
      expect(await repairRunRetentionSchedule(queue, stack.container.orm)).toBe('removed');
      expect(await queue.getJobScheduler(RUN_RETENTION_JOB)).toBeUndefined();
    });
  });

  it('a worker start records its decision, raising the generation by one', async () => {
    const before = await readRetentionDecision(stack.container.orm);
    const d = await recordRetentionDecision(stack.container.orm, { retentionMs: 7 * DAY, decidedBy: 'worker-d' });
    expect(d).toEqual({ retentionMs: 7 * DAY, decidedBy: 'worker-d', generation: (before?.generation ?? 0) + 1 });
    expect(await readRetentionDecision(stack.container.orm)).toEqual(d);
  });
  it('workers recording at once get one generation each, and the row holds the decision of the highest', async () => {
    const before = (await readRetentionDecision(stack.container.orm))?.generation ?? 0;
    const decisions = await Promise.all([1, 2, 3, 4].map((n) => recordRetentionDecision(stack.container.orm, { retentionMs: n * DAY, decidedBy: `worker-${n}` })));
    expect(decisions.map((d) => d.generation).sort((x, y) => x - y)).toEqual([1, 2, 3, 4].map((n) => before + n));
    const last = decisions.find((d) => d.generation === before + 4)!;
    expect(await readRetentionDecision(stack.container.orm)).toEqual(last);
  });

  it('two workers starting at once: Redis keeps the copy of the decision committed last, even when the other worker writes Redis after it', async () => {
    await withQueue('race', async (queue) => {
      // Worker a has recorded its decision (30d) and has not written Redis yet; worker b (60d) starts meanwhile, the whole start.
      const a = await recordRetentionDecision(stack.container.orm, { retentionMs: 30 * DAY, decidedBy: 'worker-a' });
      const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
      const bQueue = await scheduleMaintenance({ connection, prefix: `${stack.prefix}-race`, logger: pino({ level: 'silent' }), runRetentionMs: 60 * DAY, scheduledBy: 'worker-b', orm: stack.container.orm });
      try {
        const b = (await readRetentionDecision(stack.container.orm))!;
        expect(b.generation).toBe(a.generation + 1);
        expect(await retentionData(queue)).toEqual({ retention_ms: 60 * DAY, scheduled_by: 'worker-b', decision: b.generation });
        // Worker a's start goes on as scheduleMaintenance does after the record: its write to Redis comes last.
        await upsertMaintenanceSchedulers(queue, { runRetentionMs: 30 * DAY, scheduledBy: 'worker-a', decision: a, orm: stack.container.orm });
        // The decision in force is b's (its commit came later): the copy is b's once a's start is done, not at the next sweep.
        expect(await retentionData(queue)).toEqual({ retention_ms: 60 * DAY, scheduled_by: 'worker-b', decision: b.generation });
      } finally {
        await bQueue.close();
        connection.disconnect();
      }
    });
  });

  it('a worker that cannot reach Redis at start records no decision: stopped before it started, it has decided nothing', async () => {
    const before = await recordRetentionDecision(stack.container.orm, { retentionMs: 30 * DAY, decidedBy: 'worker-a' });
    const log = capturedLog();
    // A port nobody listens on: this worker's Redis is not the deployment's (or is down), and its RUN_RETENTION is off.
    const connection = createRedis(`redis://127.0.0.1:${await freePort()}`, 'producer', 'test-unreachable');
    const stopping = new AbortController();
    const start = scheduleMaintenance({ connection, prefix: `${stack.prefix}-unreachable`, logger: pino({ level: 'warn' }, log.destination), runRetentionMs: 0, scheduledBy: 'worker-stuck', orm: stack.container.orm, signal: stopping.signal });
    start.catch(() => {});
    try {
      // Its maintenance queue has tried Redis and been refused: a start that records first has recorded by then.
      await waitFor(() => log.lines.some((l) => l.msg === 'queue error') || undefined, { what: 'the maintenance queue to try Redis' });
      expect(await readRetentionDecision(stack.container.orm)).toEqual(before);
    } finally {
      stopping.abort(new Error('worker stopping'));
      connection.disconnect();
    }
    await expect(start).rejects.toThrow();
    // Had it recorded "off", every other worker's next sweep would have removed the deployment's run-retention scheduler.
    expect(await readRetentionDecision(stack.container.orm)).toEqual(before);
  });

  it("a worker started before its release's migration ran waits, saying so at error level on its first attempt and every 60th after (about once a minute), not at every retry", async () => {
    const log = capturedLog();
    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
    const migrate = (l: Record<string, unknown>) => l.level === 50 && /npm run db:migrate/.test(String(l.msg));
    await stack.db.admin('alter table run_retention_decision rename to run_retention_decision_away');
    let start: Promise<Queue> | undefined;
    try {
      start = scheduleMaintenance({ connection, prefix: `${stack.prefix}-early`, logger: pino({ level: 'info' }, log.destination), runRetentionMs: 7 * DAY, scheduledBy: 'worker-early', orm: stack.container.orm, retryMs: 1 });
      start.catch(() => {});
      await waitFor(() => log.lines.filter(migrate).length >= 2 || undefined, { timeoutMs: 60_000, what: 'two error lines naming db:migrate' });
      // The second error line comes 60 attempts after the first, not at the next retry.
      expect(log.lines.filter(migrate).slice(0, 2).map((l) => l.attempts)).toEqual([1, 61]);
    } finally {
      await stack.db.admin('alter table run_retention_decision_away rename to run_retention_decision');
    }
    const queue = await start!;
    try {
      const recorded = log.lines.find((l) => l.msg === "this worker's run-retention decision recorded");
      expect(recorded, JSON.stringify(log.lines.slice(-3))).toBeDefined();
      const failures = (recorded!.attempts as number) - 1;
      expect(failures).toBeGreaterThan(60);
      expect(log.lines.filter(migrate).map((l) => l.attempts)).toEqual(Array.from({ length: Math.ceil(failures / 60) }, (_, i) => 1 + 60 * i));
      expect(await readRetentionDecision(stack.container.orm)).toMatchObject({ retentionMs: 7 * DAY, decidedBy: 'worker-early' });
    } finally {
      await queue.obliterate({ force: true });
      await queue.close();
      connection.disconnect();
    }
  });
});

describe('a worker that noticed the loss and died before its repair (own redis-server)', () => {
  let own: TestStack;
  beforeAll(async () => {
    own = await startStack({ api: false, ownRedis: true });
  });
  afterAll(async () => {
    await own?.stop();
  });

  it("the standing maintenance schedulers come back at another worker's sweep, though the marker says the loss was seen", { timeout: 120_000 }, async () => {
    const worker = await own.spawnWorker();
    const maintenance = own.container.queues.get(MAINTENANCE_QUEUE)!;
    const marker = `${own.prefix}:sweeper-lock:marker`;
    const client = own.ownRedis!.client;
    const standing = async () => (await maintenance.getJobSchedulers()).map((s) => s.key).filter((k) => k !== RUN_RETENTION_JOB).sort();
    const both = [IDEMPOTENCY_EXPIRY_JOB, WEBHOOK_REDELIVERY_JOB].sort();
    // The first sweep sets the marker before its repair, which upserts the schedulers again: waited for
    // to its end (its log line), or that repair, still running, puts back what the flush below takes.
    await waitFor(
      async () => worker.output().includes('waiting runs repaired') && (await client.exists(marker)) === 1 && JSON.stringify(await standing()) === JSON.stringify(both),
      { timeoutMs: 30_000, what: "the worker's first sweep to end" },
    );
    // Redis loses its data, and the worker that noticed it sets the marker and is SIGKILLed before it put
    // the schedulers back (its repair of waiting runs can take minutes): one transaction, so this
    // worker's sweeps never see the marker gone.
    // (Not read back as gone: the worker's next sweep may put them back before the read.)
    expect(await client.multi().flushall().set(marker, new Date().toISOString()).exec()).toEqual([[null, 'OK'], [null, 'OK']]);
    try {
      await waitFor(async () => JSON.stringify(await standing()) === JSON.stringify(both), { timeoutMs: 20_000, what: 'the standing schedulers to come back' });
      // Log lines are written in batches: polled for before the worker is killed.
      await waitFor(() => worker.output().includes('maintenance schedulers put back'), { timeoutMs: 30_000, what: "the sweeper's warning" });
    } finally {
      worker.kill('SIGKILL');
      await worker.exited;
    }
  });
});
