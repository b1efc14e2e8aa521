import { randomBytes, randomUUID } from 'node:crypto';
import { parseConfig } from '../../../src/platform/config/config.ts';
import { createContainer, type Container } from '../../../src/container.ts';
import { tenantEm } from '../../../src/platform/db/tenant-em.ts';
import { GOLDEN_PATH } from '../../../src/modules/golden-path/golden-path.workflow.ts';
import type { WorkflowDef } from '../../../src/platform/durable/workflow.ts';
import { CLASS_A_SUBMISSION } from '../../helpers/stack.ts';
import { JWT_SECRET, REDIS_URL, type BenchDb } from './bench-db.ts';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, spawnChild, type Child } from './children.ts';
import type { DoneItem } from './child-ipc.ts';

export { CLASS_A_SUBMISSION };

export interface OursTarget {
  db: BenchDb;
  prefix: string;
  /** Connect as the owner (RLS off: only on a database whose tables are NO FORCE). */
  asOwner?: boolean;
  env?: Record<string, string>;
}

/**
 * The Node/V8 flags production starts a process with (`npm run start:worker` / `start:api`, minus
 * --env-file and --import), so the benchmark measures the same heap configuration (the worker's heap
 * sizing bounds its RSS). BENCH_NODE_ARGS adds flags for experiments.
 */
export function productionNodeFlags(script: 'start:worker' | 'start:api'): string[] {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
  const tokens = (pkg.scripts[script] ?? '').split(/\s+/);
  const flags: string[] = [];
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    if (t === '--import') i++;
    else if (t.startsWith('--') && !t.startsWith('--env-file') && !t.startsWith('--import=')) flags.push(t);
  }
  return [...flags, ...(process.env.BENCH_NODE_ARGS ?? '').split(/\s+/).filter(Boolean)];
}

/**
 * The environment production's launch line sets before node (`npm run start:worker`: `MALLOC_ARENA_MAX=2 sh .ci/node …`),
 * which the C library reads as the process starts, so never from .env: the benchmark's processes start with it too.
 */
export function productionEnv(script: 'start:worker' | 'start:api'): Record<string, string> {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
  const env: Record<string, string> = {};
  for (const t of (pkg.scripts[script] ?? '').split(/\s+/)) {
    const m = /^([A-Z][A-Z0-9_]*)=(.*)$/.exec(t);
    if (!m) break;
    env[m[1]!] = m[2]!;
  }
  return env;
}

/** The environment of our API and worker processes for one target: production defaults unless stated. */
export function oursEnv(t: OursTarget): Record<string, string> {
  const nodeOptions = process.env.BENCH_NODE_OPTIONS ?? '';
  return {
    // HS256 dev tokens (JWT_SECRET): production insists on JWKS. NODE_ENV changes nothing else on the hot path.
    NODE_ENV: 'development',
    DATABASE_URL: t.asOwner ? t.db.ownerUrl : t.db.appUrl,
    MIGRATION_DATABASE_URL: t.db.ownerUrl,
    REDIS_URL,
    QUEUE_PREFIX: t.prefix,
    JWT_SECRET,
    LOG_LEVEL: process.env.BENCH_LOG_LEVEL ?? 'info',
    OTEL_SDK_DISABLED: 'true',
    ...(nodeOptions ? { NODE_OPTIONS: nodeOptions } : {}),
    // Experiments: BENCH_OURS_ENV="WORKER_CONCURRENCY=8,WORKER_LOCK_DURATION=2s" overrides our settings.
    ...Object.fromEntries((process.env.BENCH_OURS_ENV ?? '').split(',').filter(Boolean).map((kv) => kv.split('=', 2) as [string, string])),
    ...t.env,
  };
}

export async function spawnOursWorkers(t: OursTarget, n: number, opts: { hold?: boolean; env?: Record<string, string> } = {}): Promise<Child[]> {
  const children = Array.from({ length: n }, (_, i) =>
    spawnChild('test/bench/bench-worker.ts', {
      name: `worker-${t.prefix}-${i}`,
      env: { ...productionEnv('start:worker'), ...oursEnv(t), ...(opts.hold ? { BENCH_HOLD: '1' } : {}), ...opts.env },
      nodeArgs: productionNodeFlags('start:worker'),
    }),
  );
  await Promise.all(children.map((c) => c.ready));
  return children;
}

export function wireCompletions(children: Child[], feed: (items: DoneItem[]) => void): void {
  for (const c of children) c.onDone(feed);
}

/** The producer side in the benchmark process: the production container, used only to start runs. */
export async function oursProducer(t: OursTarget, extraWorkflows: WorkflowDef[] = []): Promise<Container> {
  const config = parseConfig({ ...oursEnv(t), LOG_LEVEL: 'warn', DATABASE_POOL_MAX: '10' });
  return createContainer(config, { service: 'tool', extraWorkflows });
}

/**
 * Starts one golden-path run directly through the runtime (`DurableRuntime.start`, what a producer
 * outside a request calls): the run's insert as one tenant transaction, then its run job enqueued.
 * The POST handler does the same insert inside its own transaction, after authentication,
 * idempotency and admission (section 1 measures that path).
 */
export async function startEngineRun(c: Container, tenantId: string, workflow = GOLDEN_PATH, input: unknown = CLASS_A_SUBMISSION): Promise<string> {
  const { run } = await c.runtime.start(tenantEm(c.orm, tenantId), workflow, {
    tenantId,
    principal: 'bench',
    idempotencyHash: randomBytes(32).toString('hex'),
    input,
    correlationId: randomUUID(),
  });
  return run.id;
}

export async function stopAll(children: Child[]): Promise<void> {
  await Promise.all(children.map((c) => c.stop()));
}
