import pg from 'pg';
import { Redis } from 'ioredis';
import type { Config } from '../platform/config/config.ts';
import { databaseProblem } from '../platform/db/connection-problem.ts';
import { pgClientConfig } from '../platform/db/pg-ssl.ts';
import { setupDatabase } from '../platform/db/roles.ts';
import { migrate } from '../platform/db/migrate.ts';
import { entities } from '../entities.ts';
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
