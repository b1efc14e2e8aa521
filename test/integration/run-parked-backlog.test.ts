/**
 * A tenant's parked backlog of run jobs (WORKER_MAX_ACTIVE_RUNS_PER_TENANT, ADR 0012, *Parked backlogs*):
 * the real stack — PostgreSQL as the application role, Redis — with the production worker host and
 * executor in the test's process, the parked jobs' fallback delay scaled down (injected, no sleeps). The
 * tenant's only slot is held (a run executing elsewhere, its lease beyond the test): the parked jobs must
 * not all keep coming back on their fallback delay — about `cap` of them do, the rest wait for
 * promotions — and once the slot is given back every run completes, each step once. A job popped for
 * promotion whose slot a fresh job took first parks again at its first park's place, near the front, with
 * the plain fallback (the worker host passes its `parked_at` to the acquire), not at the tail with a scaled one.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pino from 'pino';
import { api, CLASS_A_SUBMISSION, newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { TEST_REDIS_URL } from '../helpers/env.ts';
import { Queue } from 'bullmq';
import { runExecutor, startRunHost, wrappedGoldenPath, type RunHostOptions } from '../helpers/run-host.ts';
import { startWorkers } from '../../src/platform/durable/worker-host.ts';
import { createRedis } from '../../src/platform/queue/connections.ts';
import { parseSlotMember, slotMember, slotParking, TenantSlots, type ParkedJobData } from '../../src/platform/durable/tenant-slots.ts';
import { createMetrics } from '../../src/platform/telemetry/metrics.ts';
import { series } from '../helpers/metrics.ts';

const LONG = 180_000;
/** The tenant's cap of run jobs executing at once. */
const CAP = 1;
/** Runs parked behind its one slot. */
const N = 50;
/** The (scaled-down) fallback delay of a parked job: the production one is 30–120 s. */
const FALLBACK_MS = 300;
/** How often the earliest parked job comes back while the test counts. */
const ROUNDS = 5;

describe('run jobs: a parked backlog behind a tenant at its cap', () => {
  let stack: TestStack;
  let host: ReturnType<typeof startRunHost> | undefined;
  const connection = createRedis(TEST_REDIS_URL, 'worker', 'run-parked-backlog');

  beforeAll(async () => {
    stack = await startStack();
  }, LONG);

  afterAll(async () => {
    await host?.stop();
    connection.disconnect();
    await stack?.stop();
  });

  /**
   * `m` runs of a new tenant parked behind its one slot, held by a run job executing elsewhere (its lease beyond the test),
   * on a host started with `opts` (this file's other host, serving the same queue, stopped first).
   */
  const parkedBehindHolder = async (name: string, m: number, opts: RunHostOptions) => {
    await host?.stop();
    host = undefined;
    const tenant = newTenant();
    const tok = await stack.token({ tenantId: tenant, sub: `${name}-submitter` });
    const wf = wrappedGoldenPath(stack, (step) => step.run);
    const queue = stack.container.runtime.queues.get(wf.queue)!;
    const slots = new TenantSlots(connection, { prefix: stack.prefix, cap: CAP, leaseMs: 600_000 });
    const holder = slotMember(wf.queue, `${name}-holder`);
    expect(await slots.acquire(tenant, holder)).toBe(true);
    host = startRunHost(stack, wf, `run-parked-${name}`, {}, { maxActiveRunsPerTenant: CAP, ...opts });
    for (let i = 0; i < m; i++) {
      const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token: tok, body: CLASS_A_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
      expect(res.status, res.text).toBe(202);
    }
    const parkedKey = slots.parkedKey(tenant);
    await waitFor(async () => (await connection.zcard(parkedKey)) === m, { timeoutMs: 60_000, what: `${m} run jobs parked` });
    return { tenant, wf, queue, slots, holder, parkedKey };
  };

  /** Waits for the tenant's `m` runs to complete. */
  const allCompleted = (tenant: string, m: number, after: string) =>
    waitFor(
      async () => {
        const { rows } = await stack.db.admin(`select count(*)::int as n from durable_runs where tenant_id = $1 and status = 'completed'`, [tenant]);
        return rows[0].n === m;
      },
      { timeoutMs: 120_000, what: `all ${m} runs completed after ${after}` },
    );

  it(`${N} run jobs parked behind a held slot: while the earliest comes back ${ROUNDS} times, about the cap come back (not every one); released, every run completes, each step once`, { timeout: LONG }, async () => {
    const tenant = newTenant();
    const tok = await stack.token({ tenantId: tenant, sub: 'backlog-submitter' });
    const wf = wrappedGoldenPath(stack, (step) => step.run);
    const queue = stack.container.runtime.queues.get(wf.queue)!;
    const slots = new TenantSlots(connection, { prefix: stack.prefix, cap: CAP, leaseMs: 600_000 });
    // The tenant's only slot, held by a run job executing elsewhere, its lease beyond the test: no lapse wakes anyone.
    const holder = slotMember(wf.queue, 'holder');
    expect(await slots.acquire(tenant, holder)).toBe(true);

    const entered: Array<{ run: string; seq: number }> = [];
    const counted = wrappedGoldenPath(stack, (step, seq) => async (input, ctx) => {
      entered.push({ run: ctx.run.id, seq });
      return step.run(input, ctx);
    });
    let parks = 0;
    // The host's look for lost promotions runs often (ADR 0012, *Lost promotions*): it must not bring the parked jobs back either.
    host = startRunHost(stack, counted, 'run-parked-backlog', {}, { concurrency: 4, maxActiveRunsPerTenant: CAP, parkDelayMs: () => FALLBACK_MS, onParked: () => parks++, recoverEveryMs: 100 });

    const runs: string[] = [];
    for (let i = 0; i < N; i++) {
      const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token: tok, body: CLASS_A_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
      expect(res.status, res.text).toBe(202);
      runs.push(res.json.run_id as string);
    }
    const parkedKey = slots.parkedKey(tenant);
    await waitFor(async () => (await connection.zcard(parkedKey)) === N, { timeoutMs: 60_000, what: `${N} run jobs parked` });

    const [earliest] = await connection.zrange(parkedKey, '0', '0');
    const first = parseSlotMember(earliest!).jobId;
    const parksOf = async () => ((await queue.getJob(first))?.data as { parks?: number } | undefined)?.parks ?? 0;
    const parks0 = await parksOf();
    const total0 = parks;
    await waitFor(async () => (await parksOf()) >= parks0 + ROUNDS, { timeoutMs: 60_000, what: `the earliest parked run job to come back ${ROUNDS} times` });
    const came = parks - total0;
    // Before: every parked job came back on its fallback delay (job fetch, acquire, data rewrite, moveToDelayed, park): about N × ROUNDS.
    // Now those beyond the cap come back on a fallback scaled by their rank: about CAP × ROUNDS × a log factor in all.
    expect(came, `${came} parks while the earliest came back ${ROUNDS} times`).toBeLessThan(N);
    expect(entered, 'no step executed while the slot was held').toEqual([]);
    expect(await connection.zcard(parkedKey)).toBe(N);

    // Released: promoted one after another as each run ends (not after their fallback), each step once.
    slotParking(slots, { queueOf: (name) => stack.container.runtime.queues.get(name), logger: pino({ level: 'silent' }) }).give(tenant, holder);
    await waitFor(
      async () => {
        const { rows } = await stack.db.admin(`select count(*)::int as n from durable_runs where tenant_id = $1 and status = 'completed'`, [tenant]);
        return rows[0].n === N;
      },
      { timeoutMs: 120_000, what: `all ${N} runs completed after the release` },
    );
    for (const id of runs) expect(entered.filter((e) => e.run === id).map((e) => e.seq), `steps of run ${id}`).toEqual([1, 2, 3, 4]);
    const checkpoints = await stack.db.admin(`select run_id, count(*)::int as n from durable_checkpoints where tenant_id = $1 and status = 'completed' group by run_id`, [tenant]);
    expect(checkpoints.rows.map((r) => (r as { n: number }).n)).toEqual(Array(N).fill(4));
    expect(await connection.zcard(parkedKey)).toBe(0);
  });

  it('a run job that parked before, popped for promotion and beaten to the slot by a fresh job, parks again at its first place with the plain fallback, not at the tail with one scaled by the backlog', { timeout: LONG }, async () => {
    /** Parked jobs behind the tenant's one slot. */
    const M = 5;
    /** The fallback delay, far beyond the test: no parked job comes back on it, and the delay each park chose shows its rank. */
    const FALLBACK = 600_000;
    const { tenant, wf, queue, slots, holder, parkedKey } = await parkedBehindHolder('repark', M, { concurrency: 1, parkDelayMs: () => FALLBACK });
    const [earliest] = await connection.zrange(parkedKey, '0', '0');
    const { jobId } = parseSlotMember(earliest!);
    const before = (await queue.getJob(jobId))!.data as ParkedJobData;
    expect(before.parks).toBe(1);
    expect(typeof before.parked_at).toBe('number');

    // The holder's run ends: its release pops the earliest parked for promotion; a fresh job of the tenant takes the slot before the promoted one comes to it.
    expect(await slots.release(tenant, holder)).toBe(earliest);
    const fresh = slotMember(wf.queue, 'repark-fresh');
    expect(await slots.acquire(tenant, fresh)).toBe(true);
    await (await queue.getJob(jobId))!.promote();

    // Refused again: parked again, its place its first park's time (the front: every job still parked came later).
    const reparked = await waitFor(
      async () => {
        const job = await queue.getJob(jobId);
        return (job?.data as ParkedJobData | undefined)?.parks === 2 && (await job!.getState()) === 'delayed' ? job : undefined;
      },
      { timeoutMs: 60_000, what: 'the promoted run job to be parked again' },
    );
    expect((reparked.data as ParkedJobData).parked_at).toBe(before.parked_at);
    expect(Number(await connection.zscore(parkedKey, earliest!))).toBe(before.parked_at);
    // The delay its park chose (BullMQ's record, until - now at the move): the plain fallback, rank 0 of cap 1. Ranked at the
    // tail (its first park's time not passed to the acquire) it was rankedDelayMs(FALLBACK, M - 1, CAP) = 5 × FALLBACK.
    const delay = Number(reparked.delay);
    expect(delay, `the re-park's delay, of a ${FALLBACK} ms fallback`).toBeLessThanOrEqual(FALLBACK);
    expect(delay, `the re-park's delay, of a ${FALLBACK} ms fallback`).toBeGreaterThan(FALLBACK / 2);

    // The fresh job ends: each release promotes the earliest parked, first the re-parked one, until every run completes.
    slotParking(slots, { queueOf: (name) => stack.container.runtime.queues.get(name), logger: pino({ level: 'silent' }) }).give(tenant, fresh);
    await allCompleted(tenant, M, 'the release');
    expect(await connection.zcard(parkedKey)).toBe(0);
  });

  it("a lost promotion (its releaser died between pop and promote) with the tenant's slot free: the popped job and those parked far back, on fallbacks of 10 min to an hour, are promoted by the hosts' look for lost promotions, which counts it (dealix_lost_promotions_recovered_total), and every run completes", { timeout: LONG }, async () => {
    /** Parked jobs behind the tenant's one slot. */
    const M = 6;
    /** The fallback delay, far beyond the test: a parked job completes only if something promotes it. */
    const FALLBACK = 600_000;
    // The worker's counter, as worker-runtime counts the host's recoveries in it.
    const metrics = createMetrics('worker');
    const recovered = async (how: string) => series(await metrics.registry.metrics(), 'dealix_lost_promotions_recovered_total', { jobs: 'runs', how }) ?? 0;
    const { tenant, queue, slots, holder, parkedKey } = await parkedBehindHolder('lost', M, {
      concurrency: 2,
      parkDelayMs: () => FALLBACK,
      recoverEveryMs: 200,
      onRecovered: (how) => metrics.lostPromotionsRecovered.inc({ jobs: 'runs', how }),
    });
    // The rank scaling still holds (no herd): the last parked waits M times the fallback for its promotion.
    const [last] = await connection.zrange(parkedKey, '-1', '-1');
    expect(Number((await queue.getJob(parseSlotMember(last!).jobId))!.delay)).toBeGreaterThan(FALLBACK);

    // The holder's run ends, and its worker dies between the release (which pops the earliest parked) and the promote:
    // a release with a short lease (the grace a popped job has to take the slot) and no promotion.
    const dying = new TenantSlots(connection, { prefix: stack.prefix, cap: CAP, leaseMs: 1_000 });
    const [earliest] = await connection.zrange(parkedKey, '0', '0');
    expect(await dying.release(tenant, holder)).toBe(earliest);
    expect(await connection.zcard(slots.slotsKey(tenant)), "the tenant's slot is free").toBe(0);
    expect(await (await queue.getJob(parseSlotMember(earliest!).jobId))!.getState()).toBe('delayed');

    // Before: nothing ran again until the popped job's fallback (10 min) and the others' scaled ones (20 min to an hour).
    await allCompleted(tenant, M, 'the lost promotion');
    expect(await connection.zcard(parkedKey)).toBe(0);
    await waitFor(async () => (await connection.zcard(slots.promotingKey(tenant))) === 0, { timeoutMs: 60_000, what: 'no promotion left pending' });
    // The popped job was promoted again by the look, still parked past its grace: one redo, counted (an operator sees lost
    // promotions; counted before its run could complete). The rest were promoted by their predecessors' releases, each pop a
    // promotion pending until its job's acquire, so the look never found the slot free with none pending: no `promote`. (A
    // redo of a promotion made but not yet acquired, past its grace under load, finds the job waiting and is not counted.)
    expect({ redo: await recovered('redo'), promote: await recovered('promote') }).toEqual({ redo: 1, promote: 0 });
  });

  it("a worker host stopped mid-look: its stop waits for the look's promotions, so a member the look popped is promoted before the stop resolves (not left pending for another worker's redo), and the look logs nothing after the stop", { timeout: LONG }, async () => {
    await host?.stop();
    host = undefined;
    const tenant = newTenant();
    // The look's own connection, cut right after the stop (as worker-runtime does); its promotions go through it too.
    const lookConnection = createRedis(TEST_REDIS_URL, 'worker', 'run-parked-mid-look');
    const queue = new Queue('run-parked-mid-look', { connection: lookConnection, prefix: stack.prefix });
    const parked = await queue.add('parked', {}, { delay: 600_000 });
    const member = slotMember(queue.name, parked.id!);
    // The tenant's slot held, the job parked behind it; the holder's release pops it, and its releaser dies before the promote.
    const slots = new TenantSlots(connection, { prefix: stack.prefix, cap: CAP, leaseMs: 600_000 });
    expect(await slots.acquire(tenant, 'holder')).toBe(true);
    expect(await slots.park(tenant, member, Date.now())).toBeNull();
    expect(await new TenantSlots(connection, { prefix: stack.prefix, cap: CAP, leaseMs: 1_000 }).release(tenant, 'holder')).toBe(member);

    // The look pauses, once, right after RECOVER popped the member again (past its grace: a redo), until the test lets it go on.
    let popped!: () => void;
    const poppedNow = new Promise<void>((r) => (popped = r));
    let letGo!: () => void;
    const gate = new Promise<void>((r) => (letGo = r));
    class PausingSlots extends TenantSlots {
      override async recover(limit?: number) {
        const found = await super.recover(limit);
        if (found.some((f) => f.member === member)) {
          popped();
          await gate;
        }
        return found;
      }
    }
    const warnings: string[] = [];
    const logger = pino({ level: 'warn' }, { write: (line: string) => void warnings.push(line) });
    const parking = slotParking(new PausingSlots(lookConnection, { prefix: stack.prefix, cap: CAP, leaseMs: 15_000 }), { queueOf: (name) => (name === queue.name ? queue : undefined), logger });
    const { runtime, executor } = runExecutor(stack, wrappedGoldenPath(stack, (step) => step.run), 'run-parked-mid-look');
    const stopping = startWorkers({
      runtime, executor, handlers: {}, connection: lookConnection, prefix: stack.prefix, logger, queues: [],
      settings: { concurrency: 1, lockDurationMs: 5000, stalledIntervalMs: 5000, maxStalledCount: 10 },
      lostPromotions: [{ recover: () => parking.recover(), failed: 'could not look for lost promotions' }],
      recoverEveryMs: 50,
    });
    await poppedNow;
    // Stopped mid-look: the look goes on once the stop has begun; the connection is cut as soon as the stop resolves.
    const stopped = stopping.stop(0);
    letGo();
    await stopped;
    lookConnection.disconnect();

    // Before: the stop resolved at once, the promote then failed on the closed connection ("could not promote a parked job …
    // Connection is closed", after the stop), and the member was left pending, redone by another worker after its grace (how="redo").
    expect(warnings.map((l) => (JSON.parse(l) as { msg: string }).msg)).toEqual([]);
    const probe = new Queue(queue.name, { connection, prefix: stack.prefix });
    expect(await (await probe.getJob(parked.id!))!.getState(), 'the popped job promoted before the stop resolved').toBe('waiting');
    await probe.obliterate({ force: true });
    await probe.close();
  });
});
