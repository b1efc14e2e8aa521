import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { Redis } from 'ioredis';
import { parseConfig } from '../../../src/platform/config/config.ts';
import { setupDatabase } from '../../../src/platform/db/roles.ts';
import { migrate } from '../../../src/platform/db/migrate.ts';
import { entities } from '../../../src/entities.ts';
import { TEST_ADMIN_URL, TEST_APP, TEST_JWT_SECRET, TEST_OWNER, TEST_REDIS_URL, pgUrl } from '../../helpers/env.ts';

export const ADMIN_URL = process.env.BENCH_DATABASE_ADMIN_URL ?? TEST_ADMIN_URL;
export const REDIS_URL = process.env.BENCH_REDIS_URL ?? TEST_REDIS_URL;
export const JWT_SECRET = TEST_JWT_SECRET;
const PREFIX = 'dealix_bench_';
/** Leftovers of interrupted runs older than this are dropped at start (a run never takes this long). */
const STALE_SECONDS = 3 * 3600;

export interface BenchDb {
  name: string;
  /** dealix_app: RLS in force. */
  appUrl: string;
  /** dealix_owner: owns the tables. */
  ownerUrl: string;
  /** superuser, this database. */
  adminUrl: string;
}

function dbUrl(base: string, name: string): string {
  const u = new URL(base);
  u.pathname = `/${name}`;
  return u.toString();
}

export async function adminQuery(sql: string, params?: unknown[], database?: string): Promise<pg.QueryResult> {
  const c = new pg.Client({ connectionString: database ? dbUrl(ADMIN_URL, database) : ADMIN_URL });
  await c.connect();
  try {
    return await c.query(sql, params as any[]);
  } finally {
    await c.end();
  }
}

/**
 * The benchmark's databases: one template set up and migrated like a fresh install (roles, owner,
 * grants, RLS), then one clone per phase so no phase reads another's bloat or rows.
 */
export class BenchDatabases {
  readonly id: string;
  readonly template: string;
  private readonly created: string[] = [];

  constructor() {
    this.id = `${Math.floor(Date.now() / 1000)}_${randomBytes(3).toString('hex')}`;
    this.template = `${PREFIX}${this.id}_tpl`;
  }

  async init(): Promise<void> {
    await this.dropStale();
    this.created.push(this.template);
    await setupDatabase({ adminUrl: ADMIN_URL, ownerUrl: pgUrl(TEST_OWNER, this.template), appUrl: pgUrl(TEST_APP, this.template) });
    const config = parseConfig({ JWT_SECRET, DATABASE_URL: pgUrl(TEST_APP, this.template), MIGRATION_DATABASE_URL: pgUrl(TEST_OWNER, this.template) });
    // MikroORM's migrator logs each migration on stdout, which with --json carries the report alone.
    await stdoutToStderr(() => migrate(config, entities));
  }

  /** A fresh clone of the migrated template. `rlsOff`: FORCE ROW LEVEL SECURITY removed, for an owner connection. */
  async clone(suffix: string, opts: { rlsOff?: boolean } = {}): Promise<BenchDb> {
    const name = `${PREFIX}${this.id}_${suffix}`;
    this.created.push(name);
    await adminQuery(`CREATE DATABASE ${name} TEMPLATE ${this.template} OWNER ${TEST_OWNER.user}`);
    await adminQuery(`REVOKE ALL ON DATABASE ${name} FROM PUBLIC`);
    await adminQuery(`GRANT CONNECT ON DATABASE ${name} TO ${TEST_APP.user}`);
    if (opts.rlsOff) {
      const forced = await adminQuery(`select relname from pg_class where relforcerowsecurity and relkind = 'r'`, [], name);
      for (const r of forced.rows) await adminQuery(`ALTER TABLE "${r.relname}" NO FORCE ROW LEVEL SECURITY`, [], name);
    }
    return { name, appUrl: pgUrl(TEST_APP, name), ownerUrl: pgUrl(TEST_OWNER, name), adminUrl: dbUrl(ADMIN_URL, name) };
  }

  async drop(name: string): Promise<void> {
    await adminQuery(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => {});
  }

  /** The databases created so far (a mark for {@link dropSince}). */
  mark(): number {
    return this.created.length;
  }

  /** Drops the databases created since `mark` (a phase's clones, when the phase ends). */
  async dropSince(mark: number): Promise<void> {
    const names = this.created.splice(mark);
    for (const name of names.reverse()) await this.drop(name);
  }

  /**
   * Writes every dirty buffer out now (CHECKPOINT, as the superuser), so the next phase does not pay
   * for the previous phase's writes: PostgreSQL's checkpointer otherwise spreads them over the next
   * minutes (checkpoint_completion_target), into whatever runs then.
   */
  async settle(): Promise<void> {
    await adminQuery('CHECKPOINT');
  }

  async dropAll(): Promise<void> {
    for (const name of [...this.created].reverse()) await this.drop(name);
  }

  private async dropStale(): Promise<void> {
    const res = await adminQuery(`select datname from pg_database where datname like '${PREFIX}%'`);
    const cutoff = Date.now() / 1000 - STALE_SECONDS;
    for (const r of res.rows as { datname: string }[]) {
      const epoch = Number(/^dealix_bench_(\d+)_/.exec(r.datname)?.[1] ?? 0);
      if (epoch && epoch < cutoff) await this.drop(r.datname);
    }
  }
}

/**
 * Runs `fn` with whatever it writes to stdout sent to stderr (`--json` promises one JSON document on
 * stdout; loggers bound to the console, as MikroORM's is, write through process.stdout.write).
 */
export async function stdoutToStderr<T>(fn: () => Promise<T>): Promise<T> {
  const write = process.stdout.write;
  process.stdout.write = process.stderr.write.bind(process.stderr) as typeof process.stdout.write;
  try {
    return await fn();
  } finally {
    process.stdout.write = write;
  }
}

/** Committed and rolled-back transactions of one database so far (pg_stat_database, read from another database). */
export async function xactCounts(database: string): Promise<{ commit: number; rollback: number }> {
  const r = await adminQuery(`select xact_commit, xact_rollback from pg_stat_database where datname = $1`, [database]);
  return { commit: Number(r.rows[0]?.xact_commit ?? 0), rollback: Number(r.rows[0]?.xact_rollback ?? 0) };
}

/** Deletes a queue prefix's keys with SCAN (never KEYS or FLUSH on the shared Redis). */
export async function deletePrefix(prefix: string): Promise<number> {
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
  let n = 0;
  try {
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
      cursor = next;
      if (keys.length) n += await redis.del(...keys);
    } while (cursor !== '0');
  } finally {
    redis.disconnect();
  }
  return n;
}
