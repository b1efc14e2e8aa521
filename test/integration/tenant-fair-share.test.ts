/**
 * WORKER_MAX_ACTIVE_RUNS_PER_TENANT against the real stack (PostgreSQL as the application role, Redis,
 * the production worker host and executor): one tenant's backlog no longer fills every worker slot
 * while another tenant's run waits behind it, and the backlog's jobs, parked, are promoted one per
 * freed slot and all complete (ADR 0012).
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { api, CLASS_A_SUBMISSION, newTenant, runUsers, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { monitorKeys } from '../helpers/redis-monitor.ts';
import { barrier, heldGoldenPath, startRunHost, wrappedGoldenPath } from '../helpers/run-host.ts';
import { SLOW_QUEUE, slowWorkflow } from '../helpers/slow-workflow.ts';
import { createSlowRun, jobOf, readRun, waitEntered, waitRun } from '../helpers/recovery.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { GOLDEN_PATH, GOLDEN_PATH_QUEUE } from '../../src/modules/golden-path/golden-path.workflow.ts';
import { slotMember } from '../../src/platform/durable/tenant-slots.ts';
import { retryOf } from '../../src/platform/durable/workflow.ts';
import { laterVersion } from '../helpers/versioned-workflows.ts';

const LONG = 120_000;
const CAP = 2;
const A_RUNS = 8;

async function submit(stack: TestStack, token: string, body: unknown = CLASS_A_SUBMISSION): Promise<string> {
  const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token, body, headers: { 'Idempotency-Key': randomUUID() } });
  expect(res.status, res.text).toBe(202);
  return res.json.run_id as string;
}

/**
 * The golden path with the first run to enter its first step held there until `hold.release()`; every
 * other run goes through. The held run is the first to *arrive*, not an id the test learns from the
 * POST's answer: under load a worker can take the job and enter the step before that answer reaches the
 * test (keying the hold on it let the run through unheld, and the test waited on `inside` forever).
 * `held(id)` waits, with a deadline, until the step is held and checks that it holds run `id`.
 */
function holdingFirstRun(stack: TestStack) {
  const hold = barrier();
  let first: string | undefined;
  const wf = wrappedGoldenPath(stack, (step, seq) => async (input, ctx) => {
    if (seq === 1 && (first ??= ctx.run.id) === ctx.run.id) {
      hold.enter();
      await hold.released;
    }
    return step.run(input, ctx);
  });
  const held = async (id: string) => {
    await waitFor(() => first, { what: `run ${id} to enter its first step` });
    expect(first, 'the run held in its first step').toBe(id);
    return id;
  };
  return { hold, wf, held };
}

const PLATFORM_SRC = fileURLToPath(new URL('../../src/', import.meta.url));

/**
 * `Date.now` a host whose clock runs `skewMs` ahead would read, for the platform's own code (a call with
 * a frame under src/ on its stack: the worker host parking a job, the API). BullMQ and this test keep the
 * real clock: BullMQ's lock extender, seeing the clock a minute ahead once, would not renew a held job's
 * lock for a minute after the skew (its last renewal looks a minute away), the lock lapsed, and the
 * job ran again beside itself. Restore it (`mockRestore`) in a `finally`.
 */
function skewPlatformClock(skewMs: number) {
  const realNow = Date.now.bind(Date);
  return vi.spyOn(Date, 'now').mockImplementation(() => (new Error().stack?.includes(PLATFORM_SRC) ? realNow() + skewMs : realNow()));
}

const waitCompleted = (stack: TestStack, token: string, id: string, timeoutMs = 20_000) =>
  waitFor(
    async () => {
      const res = await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token });
      if (res.json?.status === 'failed') throw new Error(`run ${id} failed: ${res.text}`);
      return res.json?.status === 'completed' ? res.json : undefined;
    },
    { timeoutMs, intervalMs: 100, what: `run ${id} to complete` },
  );

describe('a per-tenant cap on concurrently executing run jobs', () => {
  let stack: TestStack;
  let host: Awaited<ReturnType<typeof startRunHost>> | undefined;
  const tenantA = newTenant();
  const tenantB = newTenant();

  beforeAll(async () => {
    // The API and the in-process worker host share the container's pool: A's held steps hold transactions.
    stack = await startStack({ env: { DATABASE_POOL_MAX: '12' } });
  }, LONG);
  afterAll(async () => {
    await host?.stop();
    await stack?.stop();
  });

  it('off (the default): a run job sends no tenant-slot command to Redis; on, its slot commands are seen (MONITOR)', { timeout: LONG }, async () => {
    const tok = await stack.token({ tenantId: newTenant(), sub: 'monitored' });
    const monitor = await monitorKeys(`${stack.prefix}:tenant-`);
    const { seen } = monitor;
    try {
      for (const cap of [0, CAP]) {
        const off = startRunHost(stack, wrappedGoldenPath(stack, (step) => step.run), `monitored-${cap}`, {}, { maxActiveRunsPerTenant: cap });
        try {
          await waitCompleted(stack, tok, await submit(stack, tok));
        } finally {
          await off.stop();
        }
        // The host has stopped (its connection closed): every command it sent ran before this marker, which MONITOR reports after them.
        await monitor.settle(stack.redis, `${stack.prefix}-marker-${cap}`);
        if (cap === 0) {
          expect(seen).toEqual([]);
        } else {
          await waitFor(() => seen.length >= 2, { what: 'the slot commands of a run with the cap on' });
          expect(seen.some((c) => c.includes(':tenant-slots:'))).toBe(true);
        }
      }
    } finally {
      monitor.stop();
    }
  });

  it('cap 1: a run that waits for a human gives its slot back, so the tenant\'s next run goes ahead', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const tok = await stack.token({ tenantId: tenant, sub: 'waiting-submitter' });
    const one = startRunHost(stack, wrappedGoldenPath(stack, (step) => step.run), 'cap-one-host', {}, { concurrency: 2, maxActiveRunsPerTenant: 1, parkDelayMs: () => 600_000 });
    try {
      // Class B: its approval step waits for an approver (its SLA timer is due in a day: it never fires here).
      const waiting = await submit(stack, tok, SAMPLE_SUBMISSION);
      await waitFor(async () => (await api(stack, 'GET', `/api/v1/golden-path/runs/${waiting}`, { token: tok })).json?.status === 'waiting', { what: 'the class B run to wait' });
      await waitCompleted(stack, tok, await submit(stack, tok));
      await waitFor(async () => (await stack.redis.zcard(`${stack.prefix}:tenant-slots:${tenant}`)) === 0, { what: "the tenant's slots to be given back" });
    } finally {
      await one.stop();
    }
  });

  it('cap 1: a parked job that no longer exists does not swallow the wake-up of a slot given back: the next parked job is promoted', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const tok = await stack.token({ tenantId: tenant, sub: 'stale-parked-submitter' });
    const { hold, wf, held } = holdingFirstRun(stack);
    // Fallback delays far beyond the test's deadlines: a parked job completes only if a freed slot promotes it.
    const one = startRunHost(stack, wf, 'stale-parked-host', {}, { concurrency: 3, maxActiveRunsPerTenant: 1, parkDelayMs: () => 600_000 });
    try {
      const parkedKey = `${stack.prefix}:tenant-parked:${tenant}`;
      const first = await held(await submit(stack, tok));
      const gone = await submit(stack, tok);
      await waitFor(async () => (await stack.redis.zcard(parkedKey)) === 1, { what: 'the second run\'s job to be parked' });
      const next = await submit(stack, tok);
      await waitFor(async () => (await stack.redis.zcard(parkedKey)) === 2, { what: 'the third run\'s job to be parked' });
      // The earliest parked job goes away while parked (removed from the queue — by an operator, or run
      // to its end by a worker with the cap off during a rolling change); its id stays in the parked set.
      const queue = stack.container.runtime.queues.get(wf.queue)!;
      const goneJob = (await queue.getDelayed()).find((j) => j.data?.run_id === gone)!;
      await goneJob.remove();
      expect(await stack.redis.zrange(parkedKey, '0', '-1')).toContain(slotMember(wf.queue, goneJob.id!));

      // The holder ends and gives its slot back: the third run's job, parked, is promoted and completes.
      hold.release();
      await waitCompleted(stack, tok, first);
      await waitCompleted(stack, tok, next);
      expect(await stack.redis.zcard(parkedKey)).toBe(0);
    } finally {
      await one.stop();
    }
  });

  it('cap 1: parked jobs of runs cancelled in bulk are promoted in turn and end at once; the parked run behind them completes', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const tok = await runUsers(stack, tenant);
    const { hold, wf, held } = holdingFirstRun(stack);
    const one = startRunHost(stack, wf, 'cancel-parked-host', {}, { concurrency: 3, maxActiveRunsPerTenant: 1, parkDelayMs: () => 600_000 });
    try {
      const parkedKey = `${stack.prefix}:tenant-parked:${tenant}`;
      const first = await held(await submit(stack, tok.submitter));
      const parked: string[] = [];
      for (let i = 1; i <= 3; i++) {
        parked.push(await submit(stack, tok.submitter));
        await waitFor(async () => (await stack.redis.zcard(parkedKey)) === i, { what: `${i} of the tenant's jobs to be parked` });
      }
      // The two earliest parked runs are cancelled (their jobs stay parked: a cancel touches no job).
      const cancelled = parked.slice(0, 2);
      const res = await api(stack, 'POST', '/api/v1/golden-path/runs/cancel', { token: tok.admin, body: { status: ['pending'], ids: cancelled }, headers: { 'Idempotency-Key': randomUUID() } });
      expect(res.status, res.text).toBe(200);
      expect(res.json.cancelled).toBe(2);

      // The holder's release promotes the first cancelled job, whose end promotes the next, whose end promotes the live run.
      hold.release();
      await waitCompleted(stack, tok.submitter, first);
      await waitCompleted(stack, tok.submitter, parked[2]!);
      // The cancelled runs stay cancelled, with no step committed (a job carrying its first step's data may run it, and its checkpoint refuses).
      const rows = await stack.db.admin(`select r.status, (select count(*)::int from durable_checkpoints c where c.run_id = r.id) as n from durable_runs r where r.id = any($1::uuid[])`, [cancelled]);
      expect(rows.rows).toEqual([{ status: 'cancelled', n: 0 }, { status: 'cancelled', n: 0 }]);
      expect(await stack.redis.zcard(parkedKey)).toBe(0);
      await waitFor(async () => (await stack.redis.zcard(`${stack.prefix}:tenant-slots:${tenant}`)) === 0, { what: "the tenant's slots to be given back" });
    } finally {
      hold.release();
      await one.stop();
    }
  });

  it('cap 1: a job handed back at shutdown keeps its slot for the worker that takes it next; the tenant\'s parked job is not promoted past it', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const tok = await stack.token({ tenantId: tenant, sub: 'hand-back-submitter' });
    const hold = barrier();
    let holding: string | undefined;
    const wf = wrappedGoldenPath(stack, (step, seq) => async (input, ctx) => {
      // The first execution of a second step hangs (past the abort of the hand-back). Held by arrival,
      // not by the POST's answer: under load the worker can get there before that answer reaches the test.
      if (seq === 2 && holding === undefined) {
        holding = ctx.run.id;
        hold.enter();
        await hold.released;
      }
      return step.run(input, ctx);
    });
    const slotsKey = `${stack.prefix}:tenant-slots:${tenant}`;
    const parkedKey = `${stack.prefix}:tenant-parked:${tenant}`;
    const queue = stack.container.runtime.queues.get(wf.queue)!;
    const first = startRunHost(stack, wf, 'hand-back-first', {}, { concurrency: 2, maxActiveRunsPerTenant: 1, parkDelayMs: () => 600_000 });
    let second: ReturnType<typeof startRunHost> | undefined;
    try {
      const held = await submit(stack, tok);
      await waitFor(() => holding, { what: `run ${held} to enter its second step` });
      expect(holding, 'the run held in its second step').toBe(held);
      const heldJob = (await queue.getActive()).find((j) => j.data?.run_id === held)!;
      const member = slotMember(wf.queue, heldJob.id!);
      const parked = await submit(stack, tok);
      await waitFor(async () => (await stack.redis.zcard(parkedKey)) === 1, { what: "the tenant's second job to be parked" });
      const parkedJob = (await queue.getDelayed()).find((j) => j.data?.run_id === parked)!;

      // Stopped with no grace: the held job is handed back (to wait), its step aborted.
      await first.stop();
      expect(await queue.getJobState(heldJob.id!)).toBe('waiting');
      // The handed-back job still holds its slot (the next worker to take it renews it, as a re-delivery
      // does), and the parked job is still parked: it did not jump ahead of a run already under way.
      expect(await stack.redis.zrange(slotsKey, '0', '-1')).toEqual([member]);
      expect(await stack.redis.zrange(parkedKey, '0', '-1')).toEqual([slotMember(wf.queue, parkedJob.id!)]);
      expect(await queue.getJobState(parkedJob.id!)).toBe('delayed');

      // The next worker carries the handed-back run on, and its end promotes the parked one: both complete, each step once.
      second = startRunHost(stack, wf, 'hand-back-second', {}, { concurrency: 2, maxActiveRunsPerTenant: 1, parkDelayMs: () => 600_000 });
      await waitCompleted(stack, tok, held);
      await waitCompleted(stack, tok, parked);
      const checkpoints = await stack.db.admin(`select run_id, count(*)::int as n from durable_checkpoints where tenant_id = $1 and status = 'completed' group by run_id`, [tenant]);
      expect(checkpoints.rows.map((r) => (r as { n: number }).n)).toEqual([4, 4]);
      await waitFor(async () => (await stack.redis.zcard(slotsKey)) === 0, { what: "the tenant's slots to be given back" });
    } finally {
      hold.release();
      await second?.stop();
    }
  });

  it("cap 1: a parked run job whose step then failed parks again on its retry as a new arrival: behind the jobs parked since, with the first fallback delay", { timeout: LONG }, async () => {
    const tenant = newTenant();
    const tok = await stack.token({ tenantId: tenant, sub: 'retry-parked-submitter' });
    // Step 1 holds the first three runs to arrive, by arrival (not by the POST's answer): the holder H,
    // then A (parked behind H, promoted at its end), whose first attempt then fails, then C (promoted by
    // A's failure). Every later entry (A's retry, D) goes through. Step 1's retry backoff is far beyond
    // the test's deadlines: the test brings A's retry forward itself, once C holds the tenant's slot.
    const holds = [barrier(), barrier(), barrier()];
    const arrived: string[] = [];
    const entered: string[] = [];
    const base = wrappedGoldenPath(stack, (step, seq) => async (input, ctx) => {
      if (seq === 1) {
        const again = entered.includes(ctx.run.id);
        entered.push(ctx.run.id);
        if (!again && arrived.push(ctx.run.id) <= holds.length) {
          const i = arrived.length - 1;
          holds[i]!.enter();
          await holds[i]!.released;
          if (i === 1) throw new Error('transient failure of the first attempt (test)');
        }
      }
      return step.run(input, ctx);
    });
    const wf = { ...base, steps: base.steps.map((s, i) => (i === 0 ? { ...s, retry: { ...retryOf(s), backoffMs: 600_000, jitter: 0 } } : s)) };
    const parkDelays: number[] = [];
    const one = startRunHost(stack, wf, 'retry-parked-host', {}, { concurrency: 3, maxActiveRunsPerTenant: 1, parkDelayMs: (parks) => (parkDelays.push(parks), 600_000) });
    const parkedKey = `${stack.prefix}:tenant-parked:${tenant}`;
    const queue = stack.container.runtime.queues.get(wf.queue)!;
    const delayedJobOf = (run: string) => waitFor(async () => (await queue.getDelayed()).find((j) => j.data?.run_id === run), { what: `the delayed job of run ${run}` });
    const parkedCount = (n: number, what: string) => waitFor(async () => (await stack.redis.zcard(parkedKey)) === n, { what });
    try {
      const h = await submit(stack, tok);
      await waitFor(() => arrived.length >= 1, { what: 'the first run to enter its first step' });
      expect(arrived[0], 'the holder').toBe(h);
      const a = await submit(stack, tok);
      await parkedCount(1, "A's job to be parked behind the holder");
      holds[0]!.release();
      await waitFor(() => arrived.length >= 2, { what: 'A to be promoted into the slot and enter its first step' });
      expect(arrived[1], 'the run promoted after the holder').toBe(a);
      const c = await submit(stack, tok);
      await parkedCount(1, "C's job to be parked behind A");
      const d = await submit(stack, tok);
      await parkedCount(2, "D's job to be parked behind C");
      const dJob = await delayedJobOf(d);

      // A's first attempt fails: its slot goes to C, the earliest parked. A's retry, brought forward, finds C holding the slot.
      holds[1]!.release();
      await waitFor(() => arrived.length >= 3, { what: 'C to be promoted into the slot A gave back' });
      expect(arrived[2], 'the run promoted after A failed').toBe(c);
      const aJob = await delayedJobOf(a);
      await aJob.promote();
      await parkedCount(2, "A's retry to be parked behind C");

      // A's retry is a new arrival: it queues behind D (parked while A ran), not ahead of it by A's first park,
      // and counts as a first park (the 30–60 s fallback delay), as a retried webhook delivery does.
      expect(await stack.redis.zrange(parkedKey, '0', '-1')).toEqual([slotMember(wf.queue, dJob.id!), slotMember(wf.queue, aJob.id!)]);
      expect(parkDelays).toEqual([1, 1, 1, 1]);
      expect((await queue.getJob(aJob.id!))?.data).toMatchObject({ parks: 1 });

      // C's end promotes D, then D's end promotes A: every run completes, D's first step before A's retry.
      holds[2]!.release();
      for (const run of [h, a, c, d]) await waitCompleted(stack, tok, run);
      expect(entered).toEqual([h, a, c, d, a]);
    } finally {
      for (const hold of holds) hold.release();
      await one.stop();
    }
  });

  it("cap 1: parked jobs are promoted in the order they were parked on Redis's clock, not by the clocks of the worker hosts that parked them", { timeout: LONG }, async () => {
    const tenant = newTenant();
    const tok = await stack.token({ tenantId: tenant, sub: 'skewed-parked-submitter' });
    // The first run to arrive is held in its first step; every run's entry into it is recorded, in order.
    const hold = barrier();
    const entered: string[] = [];
    const wf = wrappedGoldenPath(stack, (step, seq) => async (input, ctx) => {
      if (seq === 1 && entered.push(ctx.run.id) === 1) {
        hold.enter();
        await hold.released;
      }
      return step.run(input, ctx);
    });
    const one = startRunHost(stack, wf, 'skewed-parked-host', {}, { concurrency: 3, maxActiveRunsPerTenant: 1, parkDelayMs: () => 600_000 });
    const parkedKey = `${stack.prefix}:tenant-parked:${tenant}`;
    const parkedCount = (n: number, what: string) => waitFor(async () => (await stack.redis.zcard(parkedKey)) === n, { what });
    try {
      const first = await submit(stack, tok);
      await waitFor(() => entered.length >= 1, { what: 'the first run to enter its first step' });
      expect(entered[0], 'the holder').toBe(first);
      // A is parked by a worker host whose clock runs a minute ahead (clock skew between dynos): the platform's clock, skewed while A parks.
      const fastHost = skewPlatformClock(60_000);
      let a: string;
      try {
        a = await submit(stack, tok);
        await parkedCount(1, "A's job to be parked by the fast-clocked host");
      } finally {
        fastHost.mockRestore();
      }
      // B is parked after A, by a host with the right time.
      const b = await submit(stack, tok);
      await parkedCount(2, "B's job to be parked after A");

      // The holder's end promotes A, parked first; A's end promotes B.
      hold.release();
      for (const run of [first, a, b]) await waitCompleted(stack, tok, run);
      expect(entered, 'the order the runs entered their first step').toEqual([first, a, b]);
    } finally {
      hold.release();
      await one.stop();
    }
  });

  it('cap 1: a run job put off for a workflow version this worker does not register drops its park record: its next park is a new arrival', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const tok = await stack.token({ tenantId: tenant, sub: 'deferred-parked-submitter' });
    const base = wrappedGoldenPath(stack, (step) => step.run);
    const queue = stack.container.runtime.queues.get(base.queue)!;
    // No worker serves the queue yet: the run's job waits, and gets the record of an earlier park (as a job parked, then promoted, carries).
    const run = await submit(stack, tok);
    const job = await waitFor(async () => (await queue.getWaiting()).find((j) => j.data?.run_id === run), { what: `the job of run ${run} to wait` });
    await job.updateData({ ...job.data, parks: 2, parked_at: 1 });
    // A worker of version 2 only (a rolling deploy): the job takes the tenant's free slot, then is put off for a worker of version 1.
    const v2 = startRunHost(stack, laterVersion(base, 2), 'deferred-parked-v2', {}, { concurrency: 1, maxActiveRunsPerTenant: 1, parkDelayMs: () => 600_000 });
    try {
      // Put off once or more (each time about a second later, ADR 0008): every deferral wrote the job's data.
      const data = await waitFor(
        async () => {
          const d = (await queue.getJob(job.id!))?.data;
          return (d?.deferrals ?? 0) >= 1 ? d : undefined;
        },
        { what: 'the job to be put off' },
      );
      expect(data).not.toHaveProperty('parks');
      expect(data).not.toHaveProperty('parked_at');
    } finally {
      await v2.stop();
    }
    const v1 = startRunHost(stack, base, 'deferred-parked-v1', {}, { concurrency: 1, maxActiveRunsPerTenant: 1, parkDelayMs: () => 600_000 });
    try {
      await waitCompleted(stack, tok, run);
    } finally {
      await v1.stop();
    }
  });

  it(`cap ${CAP}: a tenant with ${A_RUNS} runs held open executes at most ${CAP} at once, another tenant's run completes meanwhile, and once released all ${A_RUNS} complete, each step once`, { timeout: LONG }, async () => {
    // Tenant A's steps: each counted while it executes; A's first steps held until released.
    const { wf, state, release: releaseA } = heldGoldenPath(stack, tenantA);
    // Four jobs at once: without the cap, A's first four runs take every one of them. The parked jobs'
    // fallback delay is far beyond the test's deadlines: each completes only if a freed slot promotes it.
    host = startRunHost(stack, wf, 'fair-share-host', {}, { concurrency: 4, maxActiveRunsPerTenant: CAP, parkDelayMs: () => 600_000 });
    const tokA = await stack.token({ tenantId: tenantA, sub: 'bulk-submitter' });
    const tokB = await stack.token({ tenantId: tenantB, sub: 'one-submitter' });

    const aRuns: string[] = [];
    for (let i = 0; i < A_RUNS; i++) aRuns.push(await submit(stack, tokA));
    await waitFor(() => state.executing >= CAP, { what: `${CAP} of tenant A's runs to hold their first step` });

    // Without the cap, A's held runs fill every worker slot and B's run waits behind A's backlog.
    const bRun = await submit(stack, tokB);
    await waitCompleted(stack, tokB, bRun);
    expect(state.executing).toBe(CAP);
    expect(state.most).toBe(CAP);
    // The rest of A's jobs are parked (delayed, their ids in A's parked set), not holding worker slots.
    const parkedKey = `${stack.prefix}:tenant-parked:${tenantA}`;
    await waitFor(async () => (await stack.redis.zcard(parkedKey)) === A_RUNS - CAP, { what: `${A_RUNS - CAP} of A's jobs to be parked` });
    const queue = stack.container.runtime.queues.get(wf.queue)!;
    const delayed = await queue.getDelayed();
    expect(delayed.filter((j) => j.data?.tenant_id === tenantA && j.data?.parks === 1)).toHaveLength(A_RUNS - CAP);

    releaseA();
    for (const id of aRuns) await waitCompleted(stack, tokA, id);
    expect(state.most).toBe(CAP);
    // Nothing lost, nothing run twice: each of A's runs entered each of its four steps exactly once.
    for (const id of aRuns) expect(state.entered.filter((e) => e.run === id).map((e) => e.seq)).toEqual([1, 2, 3, 4]);
    const checkpoints = await stack.db.admin(`select run_id, count(*)::int as n from durable_checkpoints where tenant_id = $1 and status = 'completed' group by run_id`, [tenantA]);
    expect(checkpoints.rows.map((r) => (r as { n: number }).n)).toEqual(Array(A_RUNS).fill(4));
    // Every slot was given back and no job is left parked.
    expect(await stack.redis.zcard(parkedKey)).toBe(0);
    await waitFor(async () => (await stack.redis.zcard(`${stack.prefix}:tenant-slots:${tenantA}`)) === 0, { what: "A's slots to be released" });
  });
});

describe('a worker killed while its run job holds a tenant slot', () => {
  let stack: TestStack;
  const tenant = newTenant();

  beforeAll(async () => {
    stack = await startStack({ api: false, workerEntry: 'test/helpers/test-worker.ts', extraWorkflows: [slowWorkflow()], env: { WORKER_MAX_ACTIVE_RUNS_PER_TENANT: '1' } });
  }, LONG);
  afterAll(async () => {
    await stack?.stop();
  });

  it("cap 1: the SIGKILLed holder's slot lapses on its own (its job is not re-delivered) and the tenant's next run proceeds", { timeout: LONG }, async () => {
    // The holder serves only gp-slow and hangs in the run's first step: nothing else will carry that run's job.
    const holder = await stack.spawnWorker({ GP_SLOW_STEP_MS: 'hang', WORKER_QUEUES: SLOW_QUEUE });
    const stuck = await createSlowRun(stack, tenant, { enqueue: true });
    await waitEntered(holder, stuck.id, 1);
    const slotsKey = `${stack.prefix}:tenant-slots:${tenant}`;
    const member = slotMember(SLOW_QUEUE, (await jobOf(stack, stuck, 1))!.id!);
    expect(await stack.redis.zrange(slotsKey, '0', '-1')).toEqual([member]);
    holder.kill('SIGKILL');
    await holder.exited;

    // Nobody renews the dead holder's lease: it lapses by Redis's clock (three lock durations).
    const expiry = Number(await stack.redis.zscore(slotsKey, member));
    await waitFor(
      async () => {
        const [sec, us] = await stack.redis.time();
        return Number(sec) * 1000 + Math.floor(Number(us) / 1000) > expiry;
      },
      { timeoutMs: 30_000, what: "the dead holder's lease to lapse" },
    );
    // The tenant's next run, on a worker of another queue: with the cap at 1 it runs only once the lapsed slot is dropped.
    await stack.spawnWorker({ GP_SLOW_STEP_MS: '0', WORKER_QUEUES: GOLDEN_PATH_QUEUE });
    const { run } = await stack.container.runtime.start(tenantEm(stack.container.orm, tenant), GOLDEN_PATH, {
      tenantId: tenant,
      principal: 'fair-share-test',
      idempotencyHash: randomUUID().replaceAll('-', '').padEnd(64, '0'),
      input: CLASS_A_SUBMISSION,
      correlationId: randomUUID(),
    });
    expect((await waitRun(stack, tenant, run.id, ['completed', 'failed'], 30_000)).status).toBe('completed');
    // The dead holder's run is still active, its first step not committed (its job waits for a gp-slow worker), and its slot is gone.
    expect((await readRun(stack, tenant, stuck.id)).status).toBe('pending');
    await waitFor(async () => (await stack.redis.zcard(slotsKey)) === 0, { what: 'the slots to be given back' });
  });
});
