import { createHash, randomUUID } from 'node:crypto';
import { Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterEach, expect } from 'vitest';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { verifyEvidence } from '../../src/modules/evidence/evidence.service.ts';
import { COMPLETED_STEPS_SQL, type RunRow } from '../../src/platform/durable/runtime.ts';
import { stepJobId } from '../../src/platform/queue/job-ids.ts';
import { Sweeper, type SweeperOptions } from '../../src/platform/durable/sweeper.ts';
import { CLASS_A_SUBMISSION, type StackOptions, type TestStack, type WorkerHandle } from './stack.ts';
import { stackForTests, type StackForTests } from './stack-for-tests.ts';
import { RECORDS_MATCH } from './evidence.ts';
import { waitFor, within } from './poll.ts';
import { SLOW_QUEUE, SLOW_TAG, SLOW_WORKFLOW, STEP_ENTERED } from './slow-workflow.ts';

export const SLOW_STEPS = ['partner-dossier', 'economics-model', 'approval-packet', 'evidence-pack'];
export const DOMAIN_TABLES = ['partner_dossiers', 'economics_models', 'approval_requests', 'evidence_packs'] as const;

/** Starts a gp-slow run for a class A submission (no human needed) and, if asked, enqueues its steps. */
export async function createSlowRun(stack: TestStack, tenant: string, opts: { enqueue: boolean }): Promise<RunRow> {
  const runtime = stack.container.runtime;
  const { run } = await tenantEm(stack.container.orm, tenant).transactional((tx) =>
    runtime.start_run(tx, SLOW_WORKFLOW, {
      tenantId: tenant,
      principal: 'recovery-test',
      idempotencyHash: createHash('sha256').update(randomUUID()).digest('hex'),
      input: CLASS_A_SUBMISSION,
      correlationId: randomUUID(),
    }),
  );
  if (opts.enqueue) await runtime.enqueue(run, 1);
  return run;
}

export interface RunState {
  status: string;
  /** Completed steps (the live progress, from the checkpoints). */
  sequence_num: number;
  /** The run row's own sequence_num, which moves with its status (first step, wait, resume, end). */
  row_sequence_num: number;
  error: any;
  checkpoints: Array<{ id: string; sequence_num: number; step_name: string; status: string; attempt: number; completed_at: Date | null; error: any }>;
  counts: Record<(typeof DOMAIN_TABLES)[number], number>;
}

/** The run, its checkpoints and its domain rows per table, read under the run's tenant (RLS in force). */
export async function readRun(stack: TestStack, tenant: string, runId: string): Promise<RunState> {
  return tenantEm(stack.container.orm, tenant).transactional(async (tx) => {
    // Progress as the API reports it: the completed checkpoints (the run row moves only with its status).
    const [run] = await tx.execute<any[]>(`select status, ${COMPLETED_STEPS_SQL} as sequence_num, sequence_num as row_sequence_num, error from durable_runs r where id = ?`, [runId]);
    if (!run) throw new Error(`run ${runId} is not visible to tenant ${tenant}`);
    const checkpoints = await tx.execute<any[]>(
      'select id, sequence_num, step_name, status, attempt, completed_at, error from durable_checkpoints where run_id = ? order by sequence_num, created_at',
      [runId],
    );
    const counts = {} as RunState['counts'];
    for (const table of DOMAIN_TABLES) {
      const [row] = await tx.execute<{ n: number }[]>(`select count(*)::int as n from ${table} where run_id = ?`, [runId]);
      counts[table] = Number(row?.n ?? 0);
    }
    return { status: run.status, sequence_num: run.sequence_num, row_sequence_num: run.row_sequence_num, error: run.error, checkpoints, counts };
  });
}

export async function waitRun(stack: TestStack, tenant: string, runId: string, statuses: string[], timeoutMs = 60_000): Promise<RunState> {
  return waitFor(
    async () => {
      const s = await readRun(stack, tenant, runId);
      return statuses.includes(s.status) ? s : undefined;
    },
    { timeoutMs, intervalMs: 200, what: `run ${runId} to reach ${statuses.join('|')}` },
  );
}

/** Exactly one completed checkpoint per sequence_num, in the code's order, and one domain row per step. */
export function expectEveryStepOnce(state: RunState): void {
  expect(state.checkpoints.map((c) => [c.sequence_num, c.step_name, c.status])).toEqual(SLOW_STEPS.map((name, i) => [i + 1, name, 'completed']));
  expect(state.counts).toEqual({ partner_dossiers: 1, economics_models: 1, approval_requests: 1, evidence_packs: 1 });
  expect(state.sequence_num).toBe(SLOW_STEPS.length);
  expect(state.row_sequence_num).toBe(SLOW_STEPS.length); // the run's end moved its row
}

/**
 * The run's one evidence pack: its hash is the one its seal and its step 4 checkpoint record, and it
 * verifies (a kill during the evidence step leaves no second pack, and no other hash).
 */
export async function expectOneVerifiedPack(stack: TestStack, tenant: string, runId: string): Promise<void> {
  await tenantEm(stack.container.orm, tenant).transactional(async (tx) => {
    const packs = await tx.execute<Array<{ id: string; sha256: string; sealed: string | null; checkpointed: string; checkpointed_id: string }>>(
      `select e.id, e.sha256, s.sha256 as sealed, c.output->>'sha256' as checkpointed, c.output->>'evidence_pack_id' as checkpointed_id
         from evidence_packs e
         left join evidence_seals s on s.id = e.id
         join durable_checkpoints c on c.run_id = e.run_id and c.step_name = 'evidence-pack'
        where e.run_id = ?`,
      [runId],
    );
    expect(packs).toHaveLength(1);
    const [pack] = packs;
    expect(pack).toMatchObject({ sealed: pack!.sha256, checkpointed: pack!.sha256, checkpointed_id: pack!.id });
    expect(await verifyEvidence(tx, pack!.id)).toEqual({ valid: true, sha256: pack!.sha256, recomputed_sha256: pack!.sha256, recorded_sha256: pack!.sha256, records: RECORDS_MATCH });
  });
}

/** This run's log lines with message `msg` that this worker process wrote, parsed, in order. */
export function logged(worker: WorkerHandle, runId: string, msg: string): Array<Record<string, unknown>> {
  const lines: Array<Record<string, unknown>> = [];
  for (const line of worker.output().split('\n')) {
    if (!line.includes(msg)) continue;
    try {
      const j = JSON.parse(line) as Record<string, unknown>;
      if (j.msg === msg && j.run_id === runId) lines.push(j);
    } catch {
      // a line cut in the middle of a write; the next poll reads it whole
    }
  }
  return lines;
}

/** The sequence_nums of this run's steps that this worker process entered, in order (from its log lines). */
export function entered(worker: WorkerHandle, runId: string): number[] {
  return logged(worker, runId, STEP_ENTERED).flatMap((j) => (typeof j.sequence_num === 'number' ? [j.sequence_num] : []));
}

export async function waitEntered(worker: WorkerHandle, runId: string, seq: number): Promise<void> {
  await waitFor(() => entered(worker, runId).includes(seq) || worker.proc.exitCode !== null, { timeoutMs: 60_000, what: `the worker to enter step ${seq}` });
  if (!entered(worker, runId).includes(seq)) throw new Error(`worker exited before step ${seq}:\n${worker.output().slice(-4000)}`);
}

/**
 * The steps of this run the worker entered, read once its log shows the run's last step: workers
 * write logs in batches (at least every 100 ms), so a line can trail the commit it describes.
 */
export async function enteredThroughLast(worker: WorkerHandle, runId: string): Promise<number[]> {
  await waitFor(() => entered(worker, runId).includes(SLOW_STEPS.length), { timeoutMs: 60_000, what: `the worker's log line for step ${SLOW_STEPS.length}` });
  return entered(worker, runId);
}

/**
 * Stops `worker` (SIGTERM) and resolves once it has exited and its output has been read to the end
 * (WorkerHandle.exited is the 'close' of its pipes): for a check that the worker never wrote a line.
 * A live worker writes its log in batches (at least every 100 ms), so a line can trail the commit or
 * Redis state it describes, and "not in its output yet" proves nothing; at a stop pino writes what
 * it holds. An idle worker stops at once, a busy one within its grace (WORKER_SHUTDOWN_GRACE).
 */
export async function stopForWholeLog(worker: WorkerHandle): Promise<void> {
  if (worker.proc.exitCode === null && worker.proc.signalCode === null) worker.kill('SIGTERM');
  await within(worker.exited, 'the worker to stop, its whole log read', 60_000);
}

/** The BullMQ job of one step of a gp-slow run (deterministic id). */
export async function jobOf(stack: TestStack, run: Pick<RunRow, 'idempotency_hash'>, seq: number): Promise<Job | undefined> {
  const queue = stack.container.queues.get(SLOW_QUEUE);
  if (!queue) throw new Error('the stack does not know the gp-slow queue');
  return Job.fromId(queue, stepJobId(SLOW_TAG, run.idempotency_hash, seq, SLOW_STEPS[seq - 1]!));
}

/** SIGKILLs every worker of the stack still alive, so each test starts with none. */
export async function killLiveWorkers(stack: TestStack): Promise<void> {
  const live = stack.workers.filter((w) => w.proc.exitCode === null && w.proc.signalCode === null);
  for (const w of live) w.kill('SIGKILL');
  await Promise.all(live.map((w) => w.exited));
}

/**
 * The recovery sweeper of a worker process, here: the stack's ORM, runtime and Redis, under lock key
 * `<prefix>:<lock>` (a key of its own: its first sweep is a "Redis lost its data" one unless `markerKey`
 * says otherwise), a sweep a second, every incomplete run old enough (minAgeMs 0), silent unless `opts` says.
 */
export function stackSweeper(stack: TestStack, lock: string, opts: Partial<SweeperOptions> = {}): Sweeper {
  return new Sweeper({ orm: stack.container.orm, runtime: stack.container.runtime, redis: stack.container.redis, logger: pino({ level: 'silent' }), lockKey: `${stack.prefix}:${lock}`, intervalMs: 1000, minAgeMs: 0, ...opts });
}

/**
 * Deletes what a Sweeper built with its own `lockKey` outside the stack's prefix leaves in Redis — its
 * lock, `<lockKey>:marker` (no TTL: left behind by every test that sweeps) and `<lockKey>:loss-repair` —
 * found by SCAN of that lock key alone (glob characters escaped), never a broader pattern or a FLUSH:
 * other tests and helpers share this Redis.
 */
export async function dropSweeperKeys(redis: Redis, lockKey: string): Promise<void> {
  const own = lockKey.replace(/[*?[\]\\]/g, '\\$&');
  const keys: string[] = [];
  for (const pattern of [own, `${own}:*`]) {
    let cursor = '0';
    do {
      const [next, found] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
      cursor = next;
      keys.push(...found);
    } while (cursor !== '0');
  }
  if (keys.length) await redis.del(...keys);
}

/**
 * For the file (or describe) that calls it: a stack (stackForTests; without the API unless `stack` says otherwise),
 * started before its tests and stopped after them, and `lockKeys`, where a test puts the lock key of
 * each Sweeper it builds outside the stack's prefix: their keys (dropSweeperKeys; the loss marker has
 * no TTL) deleted after each test. Read `stack` from the returned object inside hooks and tests.
 */
export function sweeperStackForTests(stack: StackOptions = { api: false }): StackForTests & { lockKeys: string[] } {
  const suite = Object.assign(stackForTests({ stack }), { lockKeys: [] as string[] });
  afterEach(async () => {
    for (const lockKey of suite.lockKeys.splice(0)) await dropSweeperKeys(suite.stack.container.redis, lockKey);
  });
  return suite;
}

/**
 * Makes `target[method]` fail its first `times` calls (default once), with `error()`, then call
 * through (an injected Redis failure on a real object: a queue's listing that timed out, say).
 * `calls()` counts every call; `restore()` puts the method back.
 */
export function failingOnce<T extends object, K extends keyof T & string>(target: T, method: K, error: () => Error, times = 1): { calls(): number; restore(): void } {
  const original = target[method] as unknown as (...args: unknown[]) => Promise<unknown>;
  const own = Object.hasOwn(target, method);
  let calls = 0;
  (target as Record<string, unknown>)[method] = function (this: unknown, ...args: unknown[]) {
    return ++calls <= times ? Promise.reject(error()) : original.apply(this, args);
  };
  return { calls: () => calls, restore: () => void (own ? ((target as Record<string, unknown>)[method] = original) : delete (target as Record<string, unknown>)[method]) };
}
