import { randomBytes } from 'node:crypto';
import type { Express, Handler } from 'express';
import { Redis } from 'ioredis';
import { parseConfig } from '../../src/platform/config/config.ts';
import type { Container } from '../../src/container.ts';
import { openReadinessTarget } from '../../src/readiness/readiness.target.ts';
import { runReadiness, type ReadinessDeps } from '../../src/readiness/readiness.ts';
import type { ReadinessReport, ReadinessRow } from '../../src/readiness/readiness.types.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { TEST_JWT_SECRET, TEST_REDIS_URL } from '../helpers/env.ts';

/** The environment of a healthy stack on a throwaway database, as `.ci/readiness-gate` sets it. */
export function envFor(db: TestDatabase, extra: Record<string, string> = {}): Record<string, string> {
  return {
    NODE_ENV: 'test',
    DATABASE_URL: db.appUrl,
    MIGRATION_DATABASE_URL: db.ownerUrl,
    REDIS_URL: TEST_REDIS_URL,
    QUEUE_PREFIX: `rdy${randomBytes(5).toString('hex')}`,
    JWT_SECRET: TEST_JWT_SECRET,
    LOG_LEVEL: 'silent',
    OTEL_SDK_DISABLED: 'true',
    DATABASE_POOL_MAX: '3',
    ...extra,
  };
}

export interface MatrixOptions {
  /** Break something in the throwaway database before the matrix looks (as superuser: db.admin, or owner: db.owner). */
  tamper?(db: TestDatabase): Promise<void>;
  env?: Record<string, string>;
  /** Use this database instead of a fresh clone of the migrated template (the caller drops it). */
  db?: TestDatabase;
  /** Point pieces of the live system at throwaway things (a test app, another config, workflows). */
  adjust?(deps: ReadinessDeps, container: Container): Partial<ReadinessDeps> | void | Promise<Partial<ReadinessDeps> | void>;
}

export interface Matrix {
  report: ReadinessReport;
  row(component: string): ReadinessRow;
  failing(): string[];
}

/** Runs the matrix against the real container and app on a throwaway database, then releases everything. */
export async function matrixFor(opts: MatrixOptions = {}): Promise<Matrix> {
  const db = opts.db ?? (await createTestDatabase());
  try {
    await opts.tamper?.(db);
    const env = envFor(db, opts.env);
    const target = await openReadinessTarget(parseConfig(env));
    try {
      const deps = { ...target.deps, ...(await opts.adjust?.(target.deps, target.container)) };
      return matrixOf(await runReadiness(deps));
    } finally {
      await target.close();
      await dropKeys(env.REDIS_URL!, env.QUEUE_PREFIX!);
    }
  } finally {
    if (!opts.db) await db.drop();
  }
}

export function matrixOf(report: ReadinessReport): Matrix {
  return {
    report,
    row(component) {
      const r = report.rows.find((x) => x.component === component);
      if (!r) throw new Error(`no row ${component} in:\n${report.rows.map((x) => x.component).join('\n')}`);
      return r;
    },
    failing: () => report.rows.filter((r) => r.status === 'FAIL').map((r) => `${r.component}: ${r.reason}`),
  };
}

/** Deletes the keys a stack wrote under its queue prefix (queues' meta keys, schedulers), so a test leaves Redis as it found it. */
export async function dropKeys(url: string, prefix: string): Promise<void> {
  const redis = new Redis(url, { maxRetriesPerRequest: 1, lazyConnect: true });
  redis.on('error', () => {});
  try {
    await redis.connect();
    const keys = await redis.keys(`${prefix}:*`);
    if (keys.length) await redis.del(...keys);
  } catch {
    // an unreachable Redis (the test that breaks it) has nothing to clean
  } finally {
    redis.disconnect();
  }
}

/** Registers extra routes or middleware on a live app in front of its 404 and problem handlers. */
export function addBeforeFallbacks(app: Express, register: (app: Express) => void): Express {
  const stack = (app as unknown as { router: { stack: Array<{ name: string }> } }).router.stack;
  const before = stack.length;
  register(app);
  const added = stack.splice(before);
  const at = stack.findIndex((l) => l.name === 'notFoundHandler');
  stack.splice(at < 0 ? stack.length : at, 0, ...added);
  return app;
}

export const okHandler: Handler = (_req, res) => void res.json({ ok: true });
