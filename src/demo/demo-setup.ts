import pg from 'pg';
import { Redis } from 'ioredis';
import { Queue } from 'bullmq';
import type { Config } from '../platform/config/config.ts';
import { databaseProblem } from '../platform/db/connection-problem.ts';
import { pgClientConfig } from '../platform/db/pg-ssl.ts';
import { setupDatabase } from '../platform/db/roles.ts';
import { migrate } from '../platform/db/migrate.ts';
import { entities } from '../entities.ts';
import { GOLDEN_PATH_QUEUE } from '../modules/golden-path/golden-path.workflow.ts';
import { WEBHOOK_QUEUE } from '../platform/webhooks/delivery.ts';
import { DemoError, safeUrl, say } from './demo-support.ts';

const DEFAULT_ADMIN_URL = 'postgres://postgres@127.0.0.1:5432/postgres';
/** Role or database missing (or a wrong password): setup can fix these; anything else is an outage. */
const FIXABLE = new Set(['28000', '28P01', '3D000']);

/** Connects and disconnects; false when the role or database is missing, a DemoError naming `setting` when PostgreSQL is unreachable. */
async function canConnect(url: string, setting: string): Promise<boolean> {
  const client = new pg.Client({ ...pgClientConfig(url), connectionTimeoutMillis: 5000 });
  try {
    await client.connect();
    await client.query('select 1');
    return true;
  } catch (e) {
    if (FIXABLE.has((e as { code?: string }).code ?? '')) return false;
    throw new DemoError(databaseProblem(e, setting, url) ?? `could not connect through ${setting} (${(e as Error).message})`);
  } finally {
    await client.end().catch(() => {});
  }
}

/** Roles and database through the superuser URL when the app or owner cannot connect; then pending migrations as the owner. */
export async function prepareDatabase(config: Config): Promise<void> {
  say(`[1/8] Database    ${safeUrl(config.DATABASE_URL)}`);
  const ready = (await canConnect(config.DATABASE_URL, 'DATABASE_URL')) && (await canConnect(config.MIGRATION_DATABASE_URL, 'MIGRATION_DATABASE_URL'));
  if (!ready) {
    const adminUrl = config.DATABASE_ADMIN_URL ?? DEFAULT_ADMIN_URL;
    say(`      creating roles and database through ${safeUrl(adminUrl)}`);
    try {
      const log = await setupDatabase({ adminUrl, ownerUrl: config.MIGRATION_DATABASE_URL, appUrl: config.DATABASE_URL });
      for (const l of log) say(`      ${l}`);
    } catch (e) {
      throw new DemoError(`could not create the roles and database as ${safeUrl(adminUrl)}: ${(e as Error).message}. Set DATABASE_ADMIN_URL to a superuser URL.`);
    }
  }
  // One line, not MikroORM's two per migration plus every name again: on a fresh database that was a
  // hundred lines between step 1 and step 2 (`npm run db:migrate` still names each one).
  const applied = await migrate(config, entities, undefined, { silent: true });
  say(`      ${applied.length ? `applied ${applied.length} pending migration(s), the newest ${applied.at(-1)}` : 'roles, database and schema in place; no pending migrations'}`);
}

export async function checkRedis(url: string): Promise<void> {
  say(`[2/8] Redis       ${safeUrl(url)}`);
  const redis = new Redis(url, { lazyConnect: true, connectTimeout: 3000, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false });
  let lastError: Error | undefined;
  redis.on('error', (e: Error) => (lastError = e));
  try {
    await redis.connect();
    const policy = (await redis.call('config', 'get', 'maxmemory-policy').catch(() => [])) as string[];
    say(`      ok${policy[1] && policy[1] !== 'noeviction' ? ` (warning: maxmemory-policy is ${policy[1]}; BullMQ needs noeviction)` : ''}`);
  } catch (e) {
    throw new DemoError(`Redis is not reachable at ${safeUrl(url)} (${(lastError ?? (e as Error)).message}). Start it, or point REDIS_URL at it.`);
  } finally {
    redis.disconnect();
  }
}

/** The queues whose jobs the demo's own worker must be the only one to take: its run's, and its webhooks'. */
export const DEMO_QUEUES = [GOLDEN_PATH_QUEUE, WEBHOOK_QUEUE] as const;
/** What BullMQ's getWorkers answers when Redis refuses CLIENT LIST (a managed Redis): no worker, but a marker. */
const CLIENT_LIST_REFUSED = /does not support client list/i;

/**
 * Workers already serving the demo's queues under `prefix`, by queue (BullMQ's getWorkers: the Redis
 * connections its workers name after their queue); 'unknown' when Redis refuses CLIENT LIST.
 */
export async function workersOnDemoQueues(redisUrl: string, prefix: string): Promise<Record<string, number> | 'unknown'> {
  const redis = new Redis(redisUrl, { lazyConnect: true, connectTimeout: 3000, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false });
  redis.on('error', () => {});
  try {
    await redis.connect();
    const counts: Record<string, number> = {};
    for (const name of DEMO_QUEUES) {
      const queue = new Queue(name, { connection: redis, prefix });
      try {
        const workers = await queue.getWorkers();
        if (workers.some((w) => CLIENT_LIST_REFUSED.test(String(w.name)))) return 'unknown';
        counts[name] = workers.length;
      } finally {
        await queue.close();
      }
    }
    return counts;
  } finally {
    redis.disconnect();
  }
}

/**
 * Step 2's last check: no worker already serves the demo's queues under QUEUE_PREFIX. One that does
 * (most often the README's `npm run start:worker`, which reads the same .env) takes the demo's jobs:
 * its SSRF guard refuses the demo's receiver on 127.0.0.1 and retries the webhooks later (the demo
 * times out waiting for one), and the demo's worker, whose guard is off, takes that worker's tenants'
 * webhooks and would deliver them to private addresses. So the demo stops at once, naming the fix.
 */
export async function checkNoWorkers(redisUrl: string, prefix: string): Promise<void> {
  const workers = await workersOnDemoQueues(redisUrl, prefix);
  if (workers === 'unknown') {
    say(`      warning: Redis does not list its clients (CLIENT LIST), so the demo cannot see whether a worker already serves QUEUE_PREFIX "${prefix}": stop any before going on`);
    return;
  }
  const busy = Object.entries(workers).filter(([, n]) => n > 0);
  if (busy.length === 0) {
    say(`      no worker serves QUEUE_PREFIX "${prefix}" yet: the demo starts its own`);
    return;
  }
  throw new DemoError(
    `a worker already serves QUEUE_PREFIX "${prefix}" on this Redis (${busy.map(([q, n]) => `${n} on ${q}`).join(', ')}), most likely \`npm run start:worker\` with the same .env. ` +
      "It would take the demo's jobs: its SSRF guard refuses the demo's webhook receiver on 127.0.0.1 (the demo would time out waiting for a webhook), " +
      "while the demo's worker, whose guard is off, would deliver that worker's tenants' webhooks to private addresses. " +
      `Stop that worker (Ctrl-C where it runs) and run the demo again, or give the demo a queue prefix and a database of its own: QUEUE_PREFIX=${prefix}_demo, with DATABASE_URL and MIGRATION_DATABASE_URL naming another database (the demo creates it).`,
  );
}
