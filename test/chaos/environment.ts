import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import pg from 'pg';
import { signDevToken } from '../../src/platform/tenancy/jwt.ts';
import { TEST_ADMIN_URL, TEST_JWT_SECRET, TEST_REDIS_URL } from '../helpers/env.ts';
import { waitFor } from '../helpers/poll.ts';
import { API_ENTRY, WORKER_ENTRY, spawnManaged, type ManagedProcess } from './processes.ts';
import { createChaosDatabase, freePort, startOwnPostgres, startOwnRedis, type ChaosDatabase, type OwnPostgres, type OwnRedis } from './services.ts';

/**
 * A whole deployment for one chaos or load run: its own database and queue prefix, the real API
 * (src/server.ts) and W real worker processes as children. A process that dies without being killed
 * on purpose is counted as a crash and started again, so a crash is reported rather than hidden.
 */

/**
 * Exits nobody asked for. A worker's count by whether it had booted (logged `worker started`,
 * workerBooted): `workers`, a crash of a worker at work; `failedBoots`, a start that failed (which a
 * PostgreSQL outage may cause: the chaos verdict, verdict.ts, tolerates those only around one).
 */
export interface Crashes {
  api: number;
  workers: number;
  failedBoots: number;
}

export const API_POOL_MAX = 10;
export const WORKER_POOL_MAX = 5;
export const GOLDEN_PATH_QUEUE = 'golden-path';

export interface EnvironmentOptions {
  workers: number;
  ownRedis: boolean;
  ownPostgres: boolean;
  logLevel?: string;
  /**
   * The harness tells booted workers by their `worker started` line (workerBooted), at info: the workers
   * log at info or finer (debug, trace as asked) whatever `logLevel` or `env.LOG_LEVEL` asks; the API as asked.
   */
  watchBoot?: boolean;
  /** Extra environment for the API and workers (e.g. MAX_RUNS_IN_FLIGHT_PER_TENANT=0 to compare). */
  env?: Record<string, string>;
  log(line: string): void;
}

/** The levels that write info lines too (pino): a worker watched for its boot line may log at these as asked. */
const FINER_THAN_INFO = new Set(['info', 'debug', 'trace']);

/** Environments still running: the CLI stops them on SIGINT/SIGTERM so nothing is left behind. */
export const liveEnvironments = new Set<Environment>();

export interface Environment {
  dir: string;
  db: ChaosDatabase;
  prefix: string;
  baseUrl: string;
  api(): ManagedProcess;
  workers: ManagedProcess[];
  crashes: Crashes;
  ownRedis?: OwnRedis;
  ownPostgres?: OwnPostgres;
  /** A small superuser pool on the run's database for progress polling (errors are swallowed during faults). */
  monitor: pg.Pool;
  queue: Queue;
  poolBudget: number;
  /** SIGKILLs worker `i` and starts a replacement at once. */
  killWorker(i: number): Promise<void>;
  token(tenantId: string, sub: string, roles?: string[]): Promise<string>;
  stop(opts: { keepDir: boolean }): Promise<void>;
}

export async function startEnvironment(opts: EnvironmentOptions): Promise<Environment> {
  const dir = join(tmpdir(), `dealix-chaos-${randomBytes(4).toString('hex')}`);
  mkdirSync(dir, { recursive: true });
  const ownPostgres = opts.ownPostgres ? await startOwnPostgres(dir) : undefined;
  const ownRedis = opts.ownRedis ? await startOwnRedis(dir) : undefined;
  const db = await createChaosDatabase(ownPostgres?.adminUrl ?? TEST_ADMIN_URL);
  const prefix = `chaos${randomBytes(4).toString('hex')}`;
  const redisUrl = ownRedis?.url ?? TEST_REDIS_URL;
  opts.log(`run directory ${dir}; database ${db.name}${ownPostgres ? ` on its own PostgreSQL (${ownPostgres.adminUrl})` : ''}; redis ${redisUrl} prefix ${prefix}`);
  const port = await freePort();
  const common: Record<string, string> = {
    NODE_ENV: 'test',
    DATABASE_URL: db.appUrl,
    MIGRATION_DATABASE_URL: db.ownerUrl,
    REDIS_URL: redisUrl,
    QUEUE_PREFIX: prefix,
    JWT_SECRET: TEST_JWT_SECRET,
    LOG_LEVEL: opts.logLevel ?? 'info',
    OTEL_SDK_DISABLED: 'true',
    WORKER_LOCK_DURATION: '3s',
    WORKER_STALLED_INTERVAL: '1s',
    WORKER_CONCURRENCY: '8',
    SWEEPER_INTERVAL: '2s',
    SWEEPER_MIN_AGE: '5s',
    IDEMPOTENCY_LEASE: '10s',
    // The chaos client is one integrator submitting fast: the rate limit (abuse-limits.test.ts) and the
    // tenant's share of in-flight requests (load-shed.test.ts) are other tests' subjects.
    RATE_LIMIT_PER_MINUTE: '0',
    API_MAX_INFLIGHT_PER_TENANT: '0',
    // A step that kills its worker fails its run after STEP_MAX_CRASHES deaths in a row (ADR 0016;
    // step-crashes.test.ts is its test). Here every death is the harness's: on a machine loaded enough that
    // a worker takes seconds to boot, often one worker is up, holds every re-delivered job and is the one
    // killed next — five kills in a row on one step of one run failed it (`step_crashed_worker`) in a CI
    // run. The highest value readiness accepts (WORKER_MAX_STALLED_COUNT, 10) keeps the guard on.
    STEP_MAX_CRASHES: '10',
    ...opts.env,
  };
  // Watched for their boot line (info): the workers log at info or finer, whatever level the run asked for.
  const workerLogLevel = opts.watchBoot && !FINER_THAN_INFO.has(common.LOG_LEVEL!) ? 'info' : common.LOG_LEVEL!;
  if (workerLogLevel !== common.LOG_LEVEL) opts.log(`workers log at info, not ${common.LOG_LEVEL}: the harness tells booted workers by their 'worker started' line`);
  const crashes: Crashes = { api: 0, workers: 0, failedBoots: 0 };
  let stopping = false;

  let api: ManagedProcess;
  const startApi = () => {
    api = spawnManaged('api', API_ENTRY, { ...common, PORT: String(port), DATABASE_POOL_MAX: String(API_POOL_MAX) }, dir, `http://127.0.0.1:${port}/metrics`);
    const me = api;
    void me.exited.then(() => {
      if (stopping || me.killedOnPurpose) return;
      crashes.api++;
      opts.log(`API exited unexpectedly (see ${dir}/api.log); starting it again`);
      startApi();
    });
  };
  startApi();

  const workers: ManagedProcess[] = [];
  const metricsPorts = await Promise.all(Array.from({ length: opts.workers }, () => freePort()));
  const startWorker = (i: number) => {
    const metrics = String(metricsPorts[i]);
    const w = spawnManaged(`worker-${i}`, WORKER_ENTRY, { ...common, LOG_LEVEL: workerLogLevel, DATABASE_POOL_MAX: String(WORKER_POOL_MAX), WORKER_METRICS_PORT: metrics }, dir, `http://127.0.0.1:${metrics}/metrics`);
    workers[i] = w;
    void w.exited.then(() => {
      if (stopping || w.killedOnPurpose) return;
      // Read once it has exited: its log file holds every line it wrote (a line still in its logger's
      // buffer, at most 100 ms old, died with it — a worker dying that soon after booting counts as a failed boot).
      if (workerBooted(w)) {
        crashes.workers++;
        opts.log(`worker-${i} exited unexpectedly after it had booted (see ${dir}/worker-${i}.log); starting it again`);
      } else {
        crashes.failedBoots++;
        opts.log(`worker-${i} exited before it had booted: its start failed (see ${dir}/worker-${i}.log); starting it again`);
      }
      startWorker(i);
    });
  };
  for (let i = 0; i < opts.workers; i++) startWorker(i);

  const baseUrl = `http://127.0.0.1:${port}`;
  try {
    await waitFor(async () => (await fetch(`${baseUrl}/readyz`).catch(() => undefined))?.status === 200, { timeoutMs: 60_000, intervalMs: 200, what: 'the API to be ready' });
  } catch (err) {
    // A deployment that never became ready must not outlive its test: its API and workers (restarted on
    // exit otherwise), database and own servers go with it; the directory's logs stay for the diagnosis.
    stopping = true;
    await Promise.allSettled([api!.stop(), ...workers.map((w) => w.stop())]);
    await db.drop().catch((e) => opts.log(`could not drop ${db.name}: ${(e as Error).message}`));
    await ownRedis?.stop();
    await ownPostgres?.stop();
    opts.log(`the deployment never became ready; its logs are in ${dir}`);
    throw err;
  }

  const monitor = new pg.Pool({ connectionString: db.adminDbUrl, max: 2 });
  monitor.on('error', () => {});
  const queue = new Queue(GOLDEN_PATH_QUEUE, { connection: { url: redisUrl, maxRetriesPerRequest: null }, prefix });
  queue.on('error', () => {});

  const environment: Environment = {
    dir,
    db,
    prefix,
    baseUrl,
    api: () => api,
    workers,
    crashes,
    ...(ownRedis ? { ownRedis } : {}),
    ...(ownPostgres ? { ownPostgres } : {}),
    monitor,
    queue,
    poolBudget: API_POOL_MAX + opts.workers * WORKER_POOL_MAX,
    async killWorker(i) {
      const w = workers[i]!;
      w.killedOnPurpose = true;
      w.proc.kill('SIGKILL');
      await w.exited;
      startWorker(i);
    },
    token: (tenantId, sub, roles = []) =>
      signDevToken({ JWT_SECRET: TEST_JWT_SECRET, JWT_ISSUER: 'dealix-dev', JWT_AUDIENCE: 'dealix-api' }, { tenantId, sub, roles, ttlSeconds: 6 * 3600 }),
    async stop({ keepDir }) {
      liveEnvironments.delete(environment);
      stopping = true;
      await Promise.allSettled([api.stop(), ...workers.map((w) => w.stop())]);
      await queue.close().catch(() => {});
      await monitor.end().catch(() => {});
      if (!ownRedis) {
        // Our prefix on the shared Redis: delete exactly our keys, nothing else.
        const { Redis } = await import('ioredis');
        const r = new Redis(redisUrl, { maxRetriesPerRequest: 1 });
        for (let cursor = '0'; ; ) {
          const [next, keys] = await r.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
          if (keys.length) await r.del(...keys);
          cursor = next;
          if (cursor === '0') break;
        }
        r.disconnect();
      }
      await db.drop().catch((e) => opts.log(`could not drop ${db.name}: ${(e as Error).message}`));
      await ownRedis?.stop();
      await ownPostgres?.stop();
      if (!keepDir) rmSync(dir, { recursive: true, force: true });
    },
  };
  liveEnvironments.add(environment);
  return environment;
}

/**
 * Whether a worker process has booted: it logged `worker started` (its queues' workers are taking jobs).
 * Its metrics endpoint answers earlier — before its workflows, Redis connections and workers are up —
 * so on a loaded machine, read that way, the killer kept killing workers still starting and almost no
 * step ran (a chaos run's drain timed out with class B runs still waiting). The line is at info: an
 * environment started with `watchBoot` has its workers log at info or finer whatever LOG_LEVEL asks.
 */
export function workerBooted(worker: ManagedProcess): boolean {
  return worker.logged('"msg":"worker started"');
}

/** Polls a query on the monitor pool, treating errors (PostgreSQL restarting) as "not yet". */
export async function pollDb<T>(env: Environment, fn: (db: pg.Pool) => Promise<T>): Promise<T | undefined> {
  try {
    return await fn(env.monitor);
  } catch {
    return undefined;
  }
}
