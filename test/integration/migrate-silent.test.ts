/**
 * `db:migrate` (a release phase) against a PostgreSQL that stops answering without closing the
 * connection (partition, failover): the migrate lock's session (migrate.ts, lockMigrations) is a
 * plain pg.Client of its own, outside the pool's answer bound (coalescing-client.ts). A TCP proxy
 * (test/helpers/held-proxy.ts) in front of the owner's URL stops forwarding; migrate() must fail
 * within the bounds (the release can be retried) instead of waiting for ever.
 */
import { describe, expect, it } from 'vitest';
import pg from 'pg';
import { migrate } from '../../src/platform/db/migrate.ts';
import { replaceIndexConcurrently } from '../../src/platform/db/concurrent-index.ts';
import { entities } from '../../src/entities.ts';
import { parseConfig } from '../../src/platform/config/config.ts';
import { migrationTestDatabase } from '../helpers/migrations.ts';
import { failureWithin, waitFor } from '../helpers/poll.ts';
import { pausableProxy, type PausableProxy } from '../helpers/held-proxy.ts';
import { KEEPALIVE_TIMER, tcpTimers } from '../helpers/tcp-timers.ts';

const database = migrationTestDatabase();
const LOCK_QUERY = 'select pg_try_advisory_lock(hashtext($1)) as held';

/** The test database's config, the owner connecting through `proxy`; PostgreSQL's statement timeout 1 s, the client's margin 1 s. */
function throughProxy(proxy: PausableProxy) {
  const url = new URL(database.config.MIGRATION_DATABASE_URL);
  url.host = new URL(proxy.url).host;
  return parseConfig({ ...database.env, MIGRATION_DATABASE_URL: url.toString(), DATABASE_STATEMENT_TIMEOUT: '1s', DATABASE_ANSWER_MARGIN: '1s' });
}

/** What `p` fails with (undefined if it succeeds), within 30 s: the bounds are seconds, for ever is not. */
const failureWithin30s = (p: Promise<unknown>, what: string): Promise<unknown> => failureWithin(p, what, 30_000);

describe('db:migrate against a PostgreSQL gone silent', () => {
  it('waiting for the migrate lock, its session fails past DATABASE_STATEMENT_TIMEOUT + DATABASE_ANSWER_MARGIN instead of polling for ever', async () => {
    const proxy = await pausableProxy(database.config.MIGRATION_DATABASE_URL);
    // Another migrate holds the lock: this one tries it every half second, each try a statement.
    const holder = new pg.Client({ connectionString: database.config.MIGRATION_DATABASE_URL });
    await holder.connect();
    try {
      await holder.query(LOCK_QUERY, ['dealix:db-migrate']);
      const migrating = migrate(throughProxy(proxy), entities);
      // Its session is through the proxy and trying: a backend of the database other than the holder ran the try.
      await waitFor(
        async () =>
          (await holder.query(`select 1 from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid() and query = $1`, [LOCK_QUERY])).rowCount === 1,
        { timeoutMs: 30_000, what: 'the second migrate to try the lock' },
      );
      // Its one connection (to the proxy) has TCP keepalive on, as the pool's (connection-bounds.ts).
      const proxyPort = Number(new URL(proxy.url).port);
      await waitFor(() => tcpTimers(proxyPort, 'remote').includes(KEEPALIVE_TIMER), { timeoutMs: 10_000, what: "the keepalive timer on the lock session's socket" });
      proxy.pause();
      const failed = await failureWithin30s(migrating, 'migrate() to give up on the silent server');
      expect(String(failed)).toMatch(/Query read timeout/);
    } finally {
      proxy.resume();
      await holder.end().catch(() => {});
      await proxy.close();
    }
  });

  it('connecting to a server that accepts the connection and never answers fails after the connect bound', async () => {
    const proxy = await pausableProxy(database.config.MIGRATION_DATABASE_URL);
    try {
      proxy.pause();
      const failed = await failureWithin30s(migrate(throughProxy(proxy), entities), 'migrate() to give up connecting');
      expect(String(failed)).toMatch(/timeout expired/);
    } finally {
      proxy.resume();
      await proxy.close();
    }
  });

  it("a concurrent index build's own session gives up connecting too; its build itself is not bounded (hours without a byte are legitimate), only by TCP keepalive", async () => {
    const proxy = await pausableProxy(database.config.MIGRATION_DATABASE_URL);
    try {
      proxy.pause();
      const url = new URL(database.config.MIGRATION_DATABASE_URL);
      url.host = new URL(proxy.url).host;
      const build = replaceIndexConcurrently(url.toString(), { name: 'never_built', table: 'durable_runs', columns: 'tenant_id' });
      expect(String(await failureWithin30s(build, 'the build to give up connecting'))).toMatch(/timeout expired/);
    } finally {
      proxy.resume();
      await proxy.close();
    }
  });
});
