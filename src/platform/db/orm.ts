import { MikroORM, defineConfig, type Options } from '@mikro-orm/postgresql';
import type { EntitySchema } from '@mikro-orm/core';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import type { Config } from '../config/config.ts';
import { CoalescingClient, markHeldInsert } from './coalescing-client.ts';
import { BindingPostgreSqlDriver } from './binding-driver.ts';
import { routines } from './routines.ts';
import { Migrator } from './migrator.ts';
import { pgSsl } from './pg-ssl.ts';
import { CONNECTION_BOUNDS } from './connection-bounds.ts';

export const MIGRATIONS_PATH = fileURLToPath(new URL('../../../migrations', import.meta.url));

export type DbRole = 'app' | 'owner';

export interface OrmOptions {
  entities: EntitySchema<any, any>[];
  /** `app` (default): the unprivileged application role, RLS in force. `owner`: migrations only. */
  role?: DbRole;
  /** Override the connection URL (tests, benchmarks). */
  clientUrl?: string;
  poolMax?: number;
  debug?: boolean;
  /**
   * Give the schema generator the stored routines (routines.ts); default true. False only to write a
   * migration from the snapshot (migrate.ts, createMigration): the snapshot does not record routines.
   */
  routines?: boolean;
  /** No `[migrator] Processing …` / `Applied …` line per migration (the demo prints one summary line instead). */
  silentMigrations?: boolean;
}

export function ormConfig(config: Config, opts: OrmOptions): Options {
  const clientUrl = opts.clientUrl ?? (opts.role === 'owner' ? config.MIGRATION_DATABASE_URL : config.DATABASE_URL);
  // MikroORM reads host, port, user, password and database from the URL, nothing else: its TLS is given
  // as the driver's `ssl`, from the same rule as every other connection's (pg-ssl.ts). The URL stays
  // whole: a concurrent index build connects through it on its own (concurrent-index.ts).
  const { ssl, sslnegotiation } = pgSsl(clientUrl);
  return defineConfig({
    clientUrl,
    // Parameters bound, not written in: statements run as prepared statements (binding-driver.ts).
    driver: BindingPostgreSqlDriver,
    entities: opts.entities,
    routines: opts.routines === false ? [] : routines,
    // A migration that opts out of the transaction runs alone, outside the others' (migrator.ts).
    extensions: [Migrator],
    debug: opts.debug ?? false,
    // Tenant session variables apply per transaction (set_config(..., true)): safe with pooling and PgBouncer.
    sessionContext: 'transaction',
    // Plain inserts of a step's flush travel with its checkpoint and commit (coalescing-client.ts).
    onQuery: markHeldInsert,
    allowGlobalContext: false,
    forceUtcTimezone: true,
    ensureDatabase: false,
    pool: { min: 0, max: opts.poolMax ?? config.DATABASE_POOL_MAX ?? 10, idleTimeoutMillis: 30_000 },
    driverOptions: {
      // Sends begin and the tenant's set_config with the transaction's first statement (coalescing-client.ts).
      Client: CoalescingClient,
      // Read by CoalescingClient: false sends every statement unnamed (parsed on each execution).
      preparedStatements: config.DATABASE_PREPARED_STATEMENTS,
      // Read by CoalescingClient: one group commit per pool (group-commit.ts, ADR 0007).
      groupCommit: config.DATABASE_GROUP_COMMIT_IN_FLIGHT > 0 ? { id: randomUUID(), maxInFlight: config.DATABASE_GROUP_COMMIT_IN_FLIGHT } : undefined,
      statement_timeout: config.DATABASE_STATEMENT_TIMEOUT,
      // Read by CoalescingClient: PostgreSQL silent for DATABASE_STATEMENT_TIMEOUT plus DATABASE_ANSWER_MARGIN
      // while a statement awaits its answer drops the connection (a server gone silent, whose own
      // statement_timeout never fires; docs/reliability.md). Off when either is 0.
      answerBound: { statementMs: config.DATABASE_STATEMENT_TIMEOUT, marginMs: config.DATABASE_ANSWER_MARGIN, perStatement: config.DATABASE_ANSWER_PER_STATEMENT },
      // Connecting bounded; TCP keepalive: an idle pooled connection to a peer that is gone is found by the kernel and closed.
      ...CONNECTION_BOUNDS,
      ssl,
      ...(sslnegotiation ? { sslnegotiation } : {}),
    },
    migrations: {
      path: MIGRATIONS_PATH,
      pathTs: MIGRATIONS_PATH,
      glob: '!(*.d).{js,ts}',
      tableName: 'mikro_orm_migrations',
      silent: opts.silentMigrations ?? false,
      transactional: true,
      allOrNothing: true,
      snapshot: true,
      // The snapshot is managed by `db:migration:create` only; applying migrations never rewrites it.
      snapshotOnMigrate: false,
      snapshotName: '.snapshot-dealix',
      emit: 'ts',
      fileName: (timestamp: string, name?: string) => `Migration${timestamp}${name ? `_${name}` : ''}`,
    },
  });
}

export async function createOrm(config: Config, opts: OrmOptions): Promise<MikroORM> {
  return MikroORM.init(ormConfig(config, opts));
}

export type { MikroORM };
