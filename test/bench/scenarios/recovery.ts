import pg from 'pg';
import { Redis } from 'ioredis';
import { tenantEm } from '../../../src/platform/db/tenant-em.ts';
import { REDIS_URL } from '../lib/bench-db.ts';
import type { Child } from '../lib/children.ts';
import { oursProducer, spawnOursWorkers, stopAll, type OursTarget } from '../lib/ours.ts';
import { max, median, nowMs, sleep } from '../lib/stats.ts';
import { HOLD_WORKFLOW, holdKey, holderKey, holdWorkflow } from '../bench-workflows.ts';
import { randomBytes, randomUUID } from 'node:crypto';

export interface RecoveryResult {
  kills: number;
  /** SIGKILL of the worker holding step 1 → step 1's checkpoint committed by another worker, seconds. */
  seconds: number[];
  median: number;
  max: number;
  /** SIGKILL → the step starting again on another worker (lock expiry + stalled check), median, seconds. */
  redeliveredMedian: number;
  /** Every run completed, with exactly one completed checkpoint per step. */
  allCompleted: boolean;
  settings: { lockDurationMs: number; stalledIntervalMs: number };
}

async function poll<T>(fn: () => Promise<T | undefined>, what: string, timeoutMs = 60_000, everyMs = 5): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`recovery: timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}

/**
 * Recovery after SIGKILL: three workers; each round starts a run whose first step stays in flight on
 * whichever worker took it, SIGKILLs that worker (and releases the step at the same moment), and
 * times until another worker has committed the step's checkpoint. The killed worker is replaced in
 * the background, so at least two are alive whenever a round starts.
 */
export async function measureRecovery(target: OursTarget, kills: number): Promise<RecoveryResult> {
  const producer = await oursProducer(target, [holdWorkflow({ prefix: target.prefix })]);
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
  const admin = new pg.Client({ connectionString: target.db.adminUrl });
  await admin.connect();
  const workers: Child[] = await spawnOursWorkers(target, 3, { hold: true });
  const spawning: Promise<void>[] = [];
  const seconds: number[] = [];
  const redelivered: number[] = [];
  const runIds: string[] = [];
  const tenant = randomUUID();
  let spawnError: Error | undefined;
  try {
    for (let k = 0; k < kills; k++) {
      await poll(async () => {
        if (spawnError) throw spawnError;
        return workers.filter((w) => w.alive()).length >= 2 ? true : undefined;
      }, 'two live workers', 60_000, 20);
      const { run } = await tenantEm(producer.orm, tenant).transactional((tx) =>
        producer.runtime.start_run(tx, HOLD_WORKFLOW, { tenantId: tenant, principal: 'bench', idempotencyHash: randomBytes(32).toString('hex'), input: {}, correlationId: randomUUID() }),
      );
      runIds.push(run.id);
      await redis.set(holdKey(target.prefix, run.id), '1', 'EX', 300);
      await producer.runtime.enqueue(run, 1);
      const pid = Number(await poll(async () => (await redis.get(holderKey(target.prefix, run.id))) ?? undefined, 'the hold step to start'));
      const victim = workers.find((w) => w.pid === pid);
      if (!victim) throw new Error(`recovery: holder pid ${pid} is not one of the benchmark's workers`);
      victim.kill();
      const t0 = nowMs();
      await redis.del(holdKey(target.prefix, run.id));
      // The re-delivery: another worker's step announces itself (the lock expired and a stalled check moved the job).
      await poll(async () => ((await redis.get(holderKey(target.prefix, run.id))) !== String(pid) ? true : undefined), 'the step to start on another worker', 60_000, 5);
      redelivered.push((nowMs() - t0) / 1000);
      await poll(async () => {
        const r = await admin.query(`select 1 from durable_checkpoints where run_id = $1 and sequence_num = 1 and status = 'completed'`, [run.id]);
        return r.rowCount ? true : undefined;
      }, `run ${run.id} to be checkpointed by another worker`);
      seconds.push((nowMs() - t0) / 1000);
      const holder = await admin.query(`select output->>'holder_pid' as pid from durable_checkpoints where run_id = $1 and sequence_num = 1`, [run.id]);
      if (Number(holder.rows[0]?.pid) === pid) throw new Error('recovery: the killed worker cannot have written the checkpoint');
      workers.splice(workers.indexOf(victim), 1);
      const replacement = spawnOursWorkers(target, 1, { hold: true }).then(
        ([w]) => void workers.push(w!),
        (e: Error) => void (spawnError = e),
      );
      spawning.push(replacement);
    }
    await Promise.all(spawning);
    const ok = await poll(async () => {
      const r = await admin.query(
        `select count(*) filter (where status = 'completed')::int as done, count(*)::int as n from durable_runs where id = any($1::uuid[])`,
        [runIds],
      );
      return r.rows[0].done === runIds.length ? true : undefined;
    }, 'every recovered run to complete', 60_000, 50);
    const dupes = await admin.query(`select count(*)::int as n from durable_checkpoints where run_id = any($1::uuid[]) and status = 'completed'`, [runIds]);
    return {
      kills: seconds.length,
      seconds,
      median: median(seconds),
      max: max(seconds),
      redeliveredMedian: median(redelivered),
      allCompleted: ok && dupes.rows[0].n === runIds.length * 2,
      settings: { lockDurationMs: producer.config.WORKER_LOCK_DURATION, stalledIntervalMs: producer.config.WORKER_STALLED_INTERVAL },
    };
  } finally {
    await Promise.allSettled(spawning);
    await stopAll(workers);
    await admin.end();
    redis.disconnect();
    await producer.close();
  }
}
