import type { EntitySchema } from '@mikro-orm/core';
import pg from 'pg';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Config } from '../config/config.ts';
import { describePgUrl } from '../config/config.ts';
import { createOrm, type MikroORM } from './orm.ts';
import { pgClientConfig } from './pg-ssl.ts';
import { CONNECTION_BOUNDS, endWithin } from './connection-bounds.ts';
import { grantRuntimePrivileges } from './roles.ts';
import { tenantTables } from './tenant-owned.ts';
import { FUNCTION_SEARCH_PATH, functionSearchPathFindings, ormCatalogQuery } from './catalog.ts';

/**
 * Applies pending migrations as the owner role, then (re)grants the runtime privileges. Idempotent.
 * All in one transaction, except a migration that opts out of it (a concurrent index build), which
 * runs alone between the others (migrator.ts). One at a time per database (lockMigrations): a second
 * waits for the first, then finds nothing pending.
 */
export async function migrate(config: Config, entities: EntitySchema<any, any>[], clientUrl?: string, opts: { silent?: boolean } = {}): Promise<string[]> {
  const lock = await lockMigrations(clientUrl ?? config.MIGRATION_DATABASE_URL, config);
  const orm = await createOrm(config, { entities, role: 'owner', poolMax: 2, silentMigrations: opts.silent ?? false, ...(clientUrl ? { clientUrl } : {}) });
  try {
    const applied = await orm.migrator.up();
    const conn = orm.em.getConnection();
    await conn.transactional((trx) =>
      grantRuntimePrivileges({ execute: (sql) => conn.execute(sql, [], 'run', trx) }, describePgUrl(config.DATABASE_URL).user, tenantTables(orm)),
    );
    return applied.map((m) => m.name);
  } finally {
    await orm.close(true);
    await endLock(lock, config);
  }
}

const MIGRATE_LOCK = 'dealix:db-migrate';

/**
 * A session of its own holding the database's migrate lock until it ends. Two `db:migrate` at once
 * (two release phases) otherwise ran the same migrations side by side: the second failed on the
 * first's tables, or took the first's concurrent index build, still INVALID while it runs, for a
 * failed one's leftover (concurrent-index.ts), dropped it once built and built it again, and recorded
 * the migration twice (test/integration/migrate-concurrently.test.ts).
 *
 * Tried every half second, not waited for in `pg_advisory_lock`: a statement waiting holds a snapshot,
 * and the other's concurrent build waits for every older snapshot of the database — for ever, as
 * the waiting statement waits for it. Between tries this session holds none.
 *
 * Bounded like the pool's connections (connection-bounds.ts), and each try by pg's `query_timeout`:
 * DATABASE_STATEMENT_TIMEOUT + DATABASE_ANSWER_MARGIN, the pool's answer bound for one statement
 * (coalescing-client.ts; off when either is 0). A server gone silent while this one waits for another's
 * migrations otherwise left the release phase polling for ever (test/integration/migrate-silent.test.ts);
 * it fails now, and the release can be retried. Once the lock is held the session only sends its end,
 * which is bounded too (endLock).
 */
async function lockMigrations(url: string, config: AnswerConfig): Promise<pg.Client> {
  const answerMs = lockAnswerMs(config);
  const lock = new pg.Client({ ...pgClientConfig(url), ...CONNECTION_BOUNDS, ...(answerMs > 0 ? { query_timeout: answerMs } : {}) });
  // The connection lost while the migrations run: the lock goes with it, the migrations go on. Without
  // a listener pg's 'error' event would end the process.
  lock.on('error', () => {});
  await lock.connect();
  try {
    const tryLock = async () => (await lock.query<{ held: boolean }>('select pg_try_advisory_lock(hashtext($1)) as held', [MIGRATE_LOCK])).rows[0]!.held;
    while (!(await tryLock())) await sleep(500);
    return lock;
  } catch (e) {
    await endLock(lock, config);
    throw e;
  }
}

type AnswerConfig = Pick<Config, 'DATABASE_STATEMENT_TIMEOUT' | 'DATABASE_ANSWER_MARGIN'>;

/** The lock session's bound on each answer: the pool's for one statement (0: none, as the pool's). */
const lockAnswerMs = (config: AnswerConfig): number =>
  config.DATABASE_STATEMENT_TIMEOUT > 0 && config.DATABASE_ANSWER_MARGIN > 0 ? config.DATABASE_STATEMENT_TIMEOUT + config.DATABASE_ANSWER_MARGIN : 0;

/** Ends the lock session (releasing the lock), within its answer bound: pg's end waits for ever on a server gone silent (connection-bounds.ts). */
async function endLock(lock: pg.Client, config: AnswerConfig): Promise<void> {
  const ms = lockAnswerMs(config);
  await (ms > 0 ? endWithin(lock, () => lock.end(), ms) : lock.end());
}

/**
 * Writes a migration of what the entities add to the schema recorded by the last migration written
 * (`migrations/.snapshot-dealix.json`, which it then updates); returns its file name, or undefined when
 * there is nothing to migrate. `path`: another directory for the migration file (tests).
 *
 * Without the stored routines (routines.ts): MikroORM's snapshot does not record them, so with them
 * every migration written put `create or replace function durable_expect` in its `up` and
 * `drop function durable_expect` in its `down`: rolling back any later migration would have dropped
 * the function every checkpoint statement calls. A change to a routine is migrated by hand;
 * `db:check`, which compares the live database with the entities, routines included, reports it.
 */
export async function createMigration(config: Config, entities: EntitySchema<any, any>[], opts: { name?: string; path?: string } = {}): Promise<string | undefined> {
  const orm = await createOrm(config, { entities, role: 'owner', poolMax: 1, routines: false });
  try {
    const res = await orm.migrator.create(opts.path, false, false, opts.name);
    return res.fileName || undefined;
  } finally {
    await orm.close(true);
  }
}

export interface SchemaStatus {
  pending: string[];
  /** SQL the schema generator would run to make the database match the entities; empty when there is no drift. */
  drift: string;
}

/** Pending migrations and entity/schema drift, read through the given ORM (any role that can read the catalog). */
export async function schemaStatus(orm: MikroORM): Promise<SchemaStatus> {
  const pending = (await orm.migrator.getPending()).map((m) => m.name);
  const diff = (await orm.schema.getUpdateSchemaSQL({ wrap: false, safe: false, dropTables: true })).trim();
  const drift = [diff, ...(await disabledTriggers(orm)), ...(await invalidIndexes(orm)), ...(await functionsWithoutSearchPath(orm))].filter(Boolean).join('\n');
  return { pending, drift };
}

/**
 * The schema generator compares a trigger's body, not its function's settings: a function recreated without
 * `SET search_path` (a `CREATE OR REPLACE` resets it; the generator never writes it) left no diff, and only
 * the readiness row `function-search-path` named it, at runtime. Each function of the schema without a
 * search_path of its own listing pg_temp last (functionSearchPathFindings, catalog.ts: the readiness row's
 * query and rule), as the SQL that sets it.
 */
async function functionsWithoutSearchPath(orm: MikroORM): Promise<string[]> {
  const [row] = await orm.em.getConnection().execute<{ schema: string }[]>('select current_schema() as schema');
  const findings = await functionSearchPathFindings(ormCatalogQuery(orm), row!.schema);
  return findings.map((f) => `alter function ${f.subject.slice('function '.length)} set search_path = ${FUNCTION_SEARCH_PATH};`);
}

/**
 * The schema generator compares a trigger's definition, not whether it fires: `ALTER TABLE … DISABLE
 * TRIGGER` (or ENABLE REPLICA, which fires only during replication) leaves no diff, and the evidence
 * seal, or with `DISABLE TRIGGER ALL` a foreign key, silently stops. Each such trigger, as the SQL that re-enables it.
 */
async function disabledTriggers(orm: MikroORM): Promise<string[]> {
  const rows = await orm.em.getConnection().execute<{ tbl: string; name: string }[]>(
    `select c.relname as tbl, t.tgname as name from pg_trigger t join pg_class c on c.oid = t.tgrelid join pg_namespace n on n.oid = c.relnamespace
      where n.nspname = current_schema() and t.tgenabled in ('D', 'R') order by 1, 2`,
  );
  return rows.map((r) => `alter table "${r.tbl}" enable trigger "${r.name}";`);
}

/**
 * The schema generator compares an index's definition, not whether the planner may use it: a
 * concurrent build that failed (concurrent-index.ts; one by hand, or of a migration recorded despite
 * it) leaves the index INVALID — never read, still written — and no diff. Each such index, as the SQL
 * that builds it again without blocking writes.
 */
async function invalidIndexes(orm: MikroORM): Promise<string[]> {
  const rows = await orm.em.getConnection().execute<{ name: string }[]>(
    `select c.relname as name from pg_index i join pg_class c on c.oid = i.indexrelid join pg_namespace n on n.oid = c.relnamespace
      where n.nspname = current_schema() and not i.indisvalid order by 1`,
  );
  return rows.map((r) => `reindex index concurrently "${r.name}";`);
}
