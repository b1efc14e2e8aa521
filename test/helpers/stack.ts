import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { parseConfig, type Config } from '../../src/platform/config/config.ts';
import { createContainer, type Container } from '../../src/container.ts';
import type { WorkflowDef } from '../../src/platform/durable/workflow.ts';
import { createApp } from '../../src/app.ts';
import { signDevToken } from '../../src/platform/tenancy/jwt.ts';
import { createLogger } from '../../src/platform/telemetry/logger.ts';
import type { DestinationStream } from 'pino';
import { createTestDatabase, type TestDatabase } from './db.ts';
import { TEST_JWT_SECRET, TEST_OWNER, TEST_REDIS_URL, pgUrl } from './env.ts';
import { waitFor } from './poll.ts';
import { startOwnRedis, type OwnRedis } from './own-infra.ts';
import { untilReady } from '../../src/platform/queue/connections.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface StackOptions {
  /** Extra environment for the API and worker processes (e.g. APPROVAL_SLA_B: '2s'). */
  env?: Record<string, string>;
  /** Start the HTTP API in this process (default true). */
  api?: boolean;
  /** Worker entry to spawn (default the production worker; tests may use test/helpers/test-worker.ts). */
  workerEntry?: string;
  /** Node options for spawned workers, e.g. ['--import', './src/platform/telemetry/register.ts'] to trace them. */
  workerExecArgv?: string[];
  /** Where the in-process API logs (at env LOG_LEVEL), so a test can read its lines back. */
  logDestination?: DestinationStream;
  /** Workflows the in-process container knows besides the modules' own (e.g. the gp-slow test workflow). */
  extraWorkflows?: WorkflowDef[];
  /** A private redis-server instead of the shared Redis, which the test may stop and start (stack.ownRedis). */
  ownRedis?: boolean;
}

export interface WorkerHandle {
  proc: ChildProcess;
  output(): string;
  /** Resolves when the process has exited. */
  exited: Promise<number | null>;
  kill(signal?: NodeJS.Signals): void;
}

export interface TestStack {
  db: TestDatabase;
  prefix: string;
  env: Record<string, string>;
  config: Config;
  container: Container;
  baseUrl: string;
  redis: Redis;
  /** The private redis-server the stack runs on (StackOptions.ownRedis), stopped with the stack. */
  ownRedis?: OwnRedis;
  token(claims: { tenantId: string; sub: string; roles?: string[] }): Promise<string>;
  /** Spawns a worker process (`entry` overrides StackOptions.workerEntry) and waits for its 'worker started' line. */
  spawnWorker(extraEnv?: Record<string, string>, opts?: { entry?: string }): Promise<WorkerHandle>;
  workers: WorkerHandle[];
  stop(): Promise<void>;
}

/**
 * A real stack for one test file: its own database (cloned from the migrated template, connected as
 * the application role so RLS is in force), its own queue prefix on the real Redis, the API in-process
 * on an ephemeral port, and worker processes spawned as real child processes.
 */
export async function startStack(opts: StackOptions = {}): Promise<TestStack> {
  const ownRedis = opts.ownRedis ? await startOwnRedis() : undefined;
  const db = await createTestDatabase();
  const prefix = `t${randomBytes(5).toString('hex')}`;
  const env: Record<string, string> = {
    NODE_ENV: 'test',
    DATABASE_URL: db.appUrl,
    MIGRATION_DATABASE_URL: pgUrl(TEST_OWNER, db.name),
    REDIS_URL: TEST_REDIS_URL,
    QUEUE_PREFIX: prefix,
    JWT_SECRET: TEST_JWT_SECRET,
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
    OTEL_SDK_DISABLED: 'true',
    WORKER_LOCK_DURATION: '2s',
    WORKER_STALLED_INTERVAL: '1s',
    SWEEPER_INTERVAL: '1s',
    SWEEPER_MIN_AGE: '2s',
    DATABASE_POOL_MAX: '5',
    // The production default is 16 run jobs per queue (docs/performance-history.md, session 42), pooled on 38
    // connections; a test worker pools 5 (the suite's two files at once share max_connections), and 16 jobs
    // queueing for 5 connections would wait on the pool's 5 s checkout bound under CI load. 8, as the suite
    // ran until then; a test that needs another sets its own.
    WORKER_CONCURRENCY: '8',
    ...(ownRedis ? { REDIS_URL: ownRedis.url } : {}),
    ...opts.env,
  };
  // A tenant may use the whole of the API's small test pool (ADR 0012, amendment: half of it by default),
  // so tests that pile one tenant's requests on a lock see them all wait there; the share's bookkeeping
  // still runs on every request. tenant-db-share.test.ts sets '' (unset: the default share).
  env.API_MAX_DB_CONNECTIONS_PER_TENANT ??= env.DATABASE_POOL_MAX!;
  const config = parseConfig(env);
  const container = await createContainer(config, { service: 'api', ...(opts.extraWorkflows ? { extraWorkflows: opts.extraWorkflows } : {}) });
  // As src/server.ts: the API listens once its Redis connection is ready.
  await untilReady(container.redis, 5_000);
  if (opts.logDestination) container.logger = createLogger({ level: config.LOG_LEVEL, name: 'dealix-api', destination: opts.logDestination });
  let server: Server | undefined;
  let baseUrl = '';
  if (opts.api !== false) {
    server = await new Promise<Server>((resolve) => {
      const s = createApp(container).listen(0, '127.0.0.1', () => resolve(s));
    });
    baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }
  const redis = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
  const workers: WorkerHandle[] = [];
  const spawnWorker = async (extraEnv: Record<string, string> = {}, spawnOpts: { entry?: string } = {}) => {
    const entry = spawnOpts.entry ?? opts.workerEntry ?? 'workers/golden-path.worker.ts';
    const proc = spawn(process.execPath, [...(opts.workerExecArgv ?? []), entry], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '', ...env, LOG_LEVEL: extraEnv.LOG_LEVEL ?? 'info', ...extraEnv },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    proc.stdout!.on('data', (d) => (out += d));
    proc.stderr!.on('data', (d) => (out += d));
    // 'close', not 'exit': at 'exit' the last of its output can still be in the pipe (node's docs), and a
    // test reads the lines of a worker that has exited (its last one, its shutdown's).
    const exited = new Promise<number | null>((r) => proc.once('close', (code) => r(code)));
    const handle: WorkerHandle = { proc, output: () => out, exited, kill: (s = 'SIGKILL') => void proc.kill(s) };
    workers.push(handle);
    // Ended by a signal, a process has no exit code (null) but a signal code: a worker SIGKILLed before its
    // start line (a step that kills its worker, taken at once) is told at once, not after the 90 s.
    const ended = () => proc.exitCode !== null || proc.signalCode !== null;
    await waitFor(() => out.includes('worker started') || ended(), { timeoutMs: 90_000, what: 'worker start' });
    if (ended()) throw new Error(`worker exited at start (${proc.signalCode ?? `exit code ${proc.exitCode}`}):\n${out}`);
    return handle;
  };
  return {
    db,
    prefix,
    env,
    config,
    container,
    baseUrl,
    redis,
    ...(ownRedis ? { ownRedis } : {}),
    workers,
    token: (c) => signDevToken(config, { tenantId: c.tenantId, sub: c.sub, roles: c.roles ?? [] }),
    spawnWorker,
    async stop() {
      for (const w of workers) if (w.proc.exitCode === null && w.proc.signalCode === null) w.proc.kill('SIGKILL');
      await Promise.all(workers.map((w) => w.exited));
      if (server) await new Promise<void>((r) => server!.close(() => r()));
      await container.close();
      const keys = await redis.keys(`${prefix}:*`);
      for (let i = 0; i < keys.length; i += 500) await redis.del(...keys.slice(i, i + 500));
      redis.disconnect();
      await ownRedis?.stop();
      await db.drop();
    },
  };
}

export const newTenant = () => randomUUID();

export const SAMPLE_SUBMISSION = {
  partner: { name: 'Acme Trading', country: 'SA', sector: 'logistics', website: 'https://acme.example', registration_number: '1010101010' },
  economics: {
    expected_deals_per_year: 12,
    average_deal_value: 250000,
    win_rate: 0.3,
    gross_margin: 0.35,
    onboarding_cost: 40000,
    enablement_cost: 15000,
    annual_support_cost: 10000,
  },
  currency: 'SAR',
};

/** Class A: cost <= 50,000 and payback <= 6 months. */
export const CLASS_A_SUBMISSION = { ...SAMPLE_SUBMISSION, economics: { ...SAMPLE_SUBMISSION.economics, onboarding_cost: 20000, enablement_cost: 5000, annual_support_cost: 5000 } };
/** Class C: cost > 250,000. */
export const CLASS_C_SUBMISSION = { ...SAMPLE_SUBMISSION, economics: { ...SAMPLE_SUBMISSION.economics, onboarding_cost: 200000, enablement_cost: 50000, annual_support_cost: 30000 } };

/**
 * The users a run's cancel and retry tell apart (tokens): the run's submitter (`submitter-1`), another
 * user of the tenant, a tenant admin (`admin-1`), and an admin of another tenant with the submitter's sub.
 */
export async function runUsers(stack: TestStack, tenantId: string) {
  const t = (sub: string, roles: string[] = []) => stack.token({ tenantId, sub, roles });
  return {
    submitter: await t('submitter-1'),
    other: await t('someone-else'),
    admin: await t('admin-1', ['admin']),
    otherTenantAdmin: await stack.token({ tenantId: newTenant(), sub: 'submitter-1', roles: ['admin'] }),
  };
}

/** A partner offboarding (the second workflow): three steps, no waits. */
export const OFFBOARDING_SUBMISSION = { partner: { reference: 'P-1', name: 'Acme' }, reason: 'inactive', balances: [{ currency: 'SAR', amount: 10 }] };

/** What a submission of its own (its own idempotency hash) of an offboarding of `reference` hands the runtime's `start_run`/`start`. */
export const offboardingStart = (tenant: string, reference: string) => ({
  tenantId: tenant,
  principal: 'submitter-1',
  idempotencyHash: createHash('sha256').update(randomUUID()).digest('hex'),
  input: { ...OFFBOARDING_SUBMISSION, partner: { reference, name: 'Acme' } },
  correlationId: randomUUID(),
});

export async function api(stack: TestStack, method: string, path: string, opts: { token?: string; body?: unknown; headers?: Record<string, string>; rawBody?: string } = {}) {
  const headers: Record<string, string> = { ...(opts.headers ?? {}) };
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  let body: string | undefined;
  if (opts.rawBody !== undefined) body = opts.rawBody;
  else if (opts.body !== undefined) {
    body = JSON.stringify(opts.body);
    headers['content-type'] ??= 'application/json';
  }
  const res = await fetch(`${stack.baseUrl}${path}`, { method, headers, ...(body !== undefined ? { body } : {}) });
  const text = await res.text();
  let json: any;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, json, text };
}
