import type { Child } from './children.ts';
import { sampleRss } from './children.ts';
import { readFileSync } from 'node:fs';
import { Redis } from 'ioredis';
import pg from 'pg';
import { ADMIN_URL, REDIS_URL, xactCounts } from './bench-db.ts';
import type { IoCounter } from './io-counter.ts';
import { latency, sleep, type Latency } from './stats.ts';

/**
 * How long after a backend's last transaction its transaction counts are surely in pg_stat_database.
 * A backend flushes its statistics when it goes idle, but at most once a second (PGSTAT_MIN_INTERVAL);
 * what it ends within a second of its last flush waits for the idle-flush timer, PGSTAT_IDLE_INTERVAL =
 * 10 s (PostgreSQL 15, pgstat_report_stat). After four connections inserting for 3 s, 690 of 1,092
 * commits were visible 1.5 s later and all of them only 9.5 s later (session 26): the 1.5 s this read
 * before left a run's last second uncounted, and counted the warm-up's last second in the next window.
 */
export const STATS_SETTLE_MS = 11_000;

/** The quiet this run waits (the plan's statsSettleMs: `--quick` waits less and its counts read low). */
let settleMs = STATS_SETTLE_MS;
export function setStatsSettleMs(ms: number): void {
  settleMs = ms;
}

export interface WorkerStats {
  queries: number;
  control: number;
  redisWrites: number;
  rss: number;
  heap: number;
  cpuMs: number;
  stepMs: number[];
  stepMsBySeq?: Record<number, number[]>;
  replays?: number;
}

export interface Measured<T> {
  result: T;
  /** Committed transactions in the database during the measurement (pg_stat_database). */
  xactCommit: number;
  xactRollback: number;
  /** Client round trips (pg Client#query calls) in every process under test. */
  roundTrips: number;
  /** Socket writes to Redis (commands or pipelines) in every process under test. */
  redisWrites: number;
  /** Peak RSS of any worker process, bytes. */
  workerRssMax: number;
  /** CPU time used by the worker processes during the measurement, ms. */
  workerCpuMs: number;
  /** CPU time of the other processes under test (the API), ms. */
  otherCpuMs: number;
  /** CPU time of this (the benchmark) process during the measurement: the producer side, ms. */
  localCpuMs: number;
  /** CPU time of the PostgreSQL backends serving the database during the run, ms (approximate: 10 ms ticks). */
  pgCpuMs: number;
  /** Duration of the measured run, ms. */
  wallMs: number;
  /** CPU time of the Redis server during the run, ms (a shared instance: includes anyone else's load). */
  redisCpuMs: number;
  /** Step jobs that found their step already checkpointed (duplicate deliveries, sweeper re-enqueues). */
  replays: number;
  /** Step job durations in the workers (executor, including waiting for a pooled connection), ms. */
  step: Latency;
  /** The same by step (sequence number); absent in reports of earlier versions. */
  stepBySeq?: Record<number, Latency>;
  /**
   * The worker processes' main threads (/proc/<pid>/schedstat), summed: time running on a CPU and
   * time runnable but waiting for one, ms. A Node process runs its JavaScript on that one thread.
   */
  workerMainThread?: { runMs: number; waitMs: number };
}

/**
 * Measures `fn` against the processes under test: resets their counters, snapshots pg_stat_database
 * after the statistics have settled, runs, lets them settle again and reads the deltas.
 */
export async function measure<T>(args: { database: string; workers: Child[]; others?: Child[]; local?: IoCounter; fn: () => Promise<T>; accounting?: boolean }): Promise<Measured<T>> {
  // Transaction counts need settled statistics on both sides; phases that only time things skip the wait.
  const accounting = args.accounting ?? true;
  const all = [...args.workers, ...(args.others ?? [])];
  if (accounting) await sleep(settleMs);
  await Promise.all(all.map((c) => c.stats(true)));
  args.local?.reset();
  const before = await xactCounts(args.database);
  const rss = sampleRss(() => args.workers.filter((w) => w.alive()).map((w) => w.pid));
  // Backends that serve the database during the run: those connected now and any that connect later.
  // Watched over one connection: a connection per look would start and end a backend twice a second,
  // CPU that lands on the machine under test.
  const pgStart = new Map<number, number>();
  const admin = new pg.Client({ connectionString: ADMIN_URL });
  await admin.connect();
  const watchBackends = async () => {
    for (const pid of await backendPids(args.database, admin).catch(() => [] as number[])) if (!pgStart.has(pid)) pgStart.set(pid, procCpuMs(pid));
  };
  await watchBackends();
  const watcher = setInterval(() => void watchBackends(), 500);
  const sched0 = new Map(args.workers.map((w) => [w.pid, schedMs(w.pid)]));
  const redisPid = await redisServerPid();
  const redis0 = redisPid ? procCpuMs(redisPid) : 0;
  const cpu0 = process.cpuUsage();
  const wall0 = performance.now();
  const result = await args.fn();
  const wallMs = performance.now() - wall0;
  const workerMainThread = { runMs: 0, waitMs: 0 };
  for (const [pid, before] of sched0) {
    const after = schedMs(pid);
    if (!before || !after) continue;
    workerMainThread.runMs += after.runMs - before.runMs;
    workerMainThread.waitMs += after.waitMs - before.waitMs;
  }
  const cpu = process.cpuUsage(cpu0);
  const redisCpuMs = redisPid ? procCpuMs(redisPid) - redis0 : Number.NaN;
  clearInterval(watcher);
  await watchBackends();
  await admin.end();
  let pgCpuMs = 0;
  for (const [pid, start] of pgStart) pgCpuMs += Math.max(0, procCpuMs(pid) - start);
  const workerRssMax = rss.stop();
  const localQueries = args.local?.total ?? 0;
  const localRedis = args.local?.redisWrites ?? 0;
  const stats = await Promise.all(all.map((c) => c.stats<WorkerStats>(true)));
  if (accounting) await sleep(settleMs);
  const after = accounting ? await xactCounts(args.database) : { commit: Number.NaN, rollback: Number.NaN };
  const workerStats = stats.slice(0, args.workers.length);
  return {
    result,
    xactCommit: after.commit - before.commit,
    xactRollback: after.rollback - before.rollback,
    roundTrips: localQueries + stats.reduce((s, x) => s + x.queries, 0),
    redisWrites: localRedis + stats.reduce((s, x) => s + (x.redisWrites ?? 0), 0),
    workerRssMax,
    replays: workerStats.reduce((s, x) => s + (x.replays ?? 0), 0),
    workerCpuMs: workerStats.reduce((s, x) => s + x.cpuMs, 0),
    otherCpuMs: stats.slice(args.workers.length).reduce((s, x) => s + x.cpuMs, 0),
    localCpuMs: (cpu.user + cpu.system) / 1000,
    pgCpuMs,
    redisCpuMs,
    wallMs,
    step: latency(workerStats.flatMap((s) => s.stepMs)),
    stepBySeq: bySeq(workerStats),
    workerMainThread,
  };
}

function bySeq(stats: WorkerStats[]): Record<number, Latency> {
  const all: Record<number, number[]> = {};
  for (const s of stats) for (const [seq, ms] of Object.entries(s.stepMsBySeq ?? {})) (all[Number(seq)] ??= []).push(...ms);
  return Object.fromEntries(Object.entries(all).map(([seq, ms]) => [seq, latency(ms)]));
}

/** A process's main thread: time on a CPU and time waiting in a run queue (/proc/<pid>/schedstat, ns), ms; undefined when gone. */
function schedMs(pid: number): { runMs: number; waitMs: number } | undefined {
  try {
    const [run, wait] = readFileSync(`/proc/${pid}/schedstat`, 'utf8').trim().split(/\s+/).map(Number);
    return { runMs: run! / 1e6, waitMs: wait! / 1e6 };
  } catch {
    return undefined;
  }
}

/** CPU time (ms) of a process from /proc/<pid>/stat (utime + stime), 0 when it is gone. */
export function procCpuMs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
  } catch {
    return 0;
  }
}
const CLOCK_TICKS = 100;

/** PostgreSQL backends serving `database` right now (their pids, to read their CPU time). */
async function backendPids(database: string, admin: pg.Client): Promise<number[]> {
  const r = await admin.query(`select pid from pg_stat_activity where datname = $1`, [database]);
  return r.rows.map((x: { pid: number }) => x.pid);
}

let redisPidCache: number | undefined;
/** The local Redis server's pid (INFO server), when it runs on this machine. */
async function redisServerPid(): Promise<number | undefined> {
  if (redisPidCache !== undefined) return redisPidCache || undefined;
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
  try {
    const pid = Number(/process_id:(\d+)/.exec(await redis.info('server'))?.[1] ?? 0);
    redisPidCache = pid && procCpuMs(pid) > 0 ? pid : 0;
  } catch {
    redisPidCache = 0;
  } finally {
    redis.disconnect();
  }
  return redisPidCache || undefined;
}
