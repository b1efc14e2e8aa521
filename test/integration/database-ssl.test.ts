/**
 * The TLS of the platform's PostgreSQL connections, one rule for all of them (src/platform/db/pg-ssl.ts).
 *
 * Against the shared server (ssl off): with `sslmode=require` every client — the ORM's pool, db:setup,
 * the migrate lock, a concurrent index build, the demo's check — refuses to go on in plain text. The
 * ORM used to drop the URL's `sslmode` and connect unencrypted without a word.
 *
 * Against a private cluster with a self-signed certificate: `require` connects encrypted (the ORM's
 * backend included, as pg_stat_ssl sees it) without checking the certificate, as libpq does; pg's own
 * reading of `require` (verify-full) refused it. `verify-ca` / `verify-full` check it against `sslrootcert`.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { TEST_ADMIN_URL, TEST_JWT_SECRET } from '../helpers/env.ts';
import { startOwnPostgres, type OwnPostgres } from '../helpers/own-infra.ts';
import { parseConfig } from '../../src/platform/config/config.ts';
import { createOrm, type MikroORM } from '../../src/platform/db/orm.ts';
import { setupDatabase } from '../../src/platform/db/roles.ts';
import { migrate } from '../../src/platform/db/migrate.ts';
import { replaceIndexConcurrently } from '../../src/platform/db/concurrent-index.ts';
import { pgClientConfig } from '../../src/platform/db/pg-ssl.ts';
import { prepareDatabase } from '../../src/demo/demo-setup.ts';
import { entities } from '../../src/entities.ts';

const NO_SSL = /The server does not support SSL connections/;
const LONG = 60_000;

function withParams(url: string, params: Record<string, string>): string {
  const u = new URL(url);
  for (const [k, v] of Object.entries(params)) u.searchParams.set(k, v);
  return u.toString();
}

const configFor = (appUrl: string, ownerUrl: string) => parseConfig({ JWT_SECRET: TEST_JWT_SECRET, DATABASE_URL: appUrl, MIGRATION_DATABASE_URL: ownerUrl });

/** Whether the ORM's own pooled connection is encrypted, as the server sees it. */
async function ormSsl(url: string): Promise<boolean> {
  let orm: MikroORM | undefined;
  try {
    orm = await createOrm(configFor(url, url), { entities, clientUrl: url, poolMax: 1 });
    const [row] = await orm.em.getConnection().execute<{ ssl: boolean }[]>('select ssl from pg_stat_ssl where pid = pg_backend_pid()');
    return row!.ssl;
  } finally {
    await orm?.close(true);
  }
}

/** Whether a `pg.Client` configured as the platform's own clients are (pgClientConfig) connects encrypted. */
async function clientSsl(url: string): Promise<boolean> {
  const c = new pg.Client({ ...pgClientConfig(url), connectionTimeoutMillis: 10_000 });
  try {
    await c.connect();
    const { rows } = await c.query<{ ssl: boolean }>('select ssl from pg_stat_ssl where pid = pg_backend_pid()');
    return rows[0]!.ssl;
  } finally {
    await c.end().catch(() => {});
  }
}

describe('sslmode=require against a server without TLS', () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db?.drop();
  });
  const require = (url: string) => withParams(url, { sslmode: 'require' });

  it('the ORM refuses to connect in plain text (it used to, ignoring sslmode)', { timeout: LONG }, async () => {
    await expect(ormSsl(require(db.appUrl))).rejects.toThrow(NO_SSL);
    // The same URL without sslmode connects, in plain text: the refusal above is the mode's.
    expect(await ormSsl(db.appUrl)).toBe(false);
  });

  it('every pg client of its own refuses too: db:setup, the migrate lock, a concurrent index build, the demo', { timeout: LONG }, async () => {
    const config = configFor(require(db.appUrl), require(db.ownerUrl));
    await expect(setupDatabase({ adminUrl: require(TEST_ADMIN_URL), ownerUrl: config.MIGRATION_DATABASE_URL, appUrl: config.DATABASE_URL })).rejects.toThrow(NO_SSL);
    await expect(migrate(config, entities)).rejects.toThrow(NO_SSL);
    await expect(replaceIndexConcurrently(require(db.ownerUrl), { name: 'ssl_test_idx', table: 'runs', columns: 'tenant_id' })).rejects.toThrow(NO_SSL);
    await expect(prepareDatabase(config)).rejects.toThrow(NO_SSL);
  });
});

describe('a server with a self-signed certificate', () => {
  let own: OwnPostgres;
  beforeAll(async () => {
    own = await startOwnPostgres({ ssl: true });
  }, LONG);
  afterAll(async () => {
    await own?.destroy();
  });
  const url = (params: Record<string, string>, host = '127.0.0.1') => {
    const u = new URL(withParams(own.adminUrl, params));
    u.hostname = host;
    return u.toString();
  };

  it('require: encrypted without checking the certificate, the ORM and a pg client alike', { timeout: LONG }, async () => {
    expect(await ormSsl(url({ sslmode: 'require' }))).toBe(true);
    expect(await clientSsl(url({ sslmode: 'require' }))).toBe(true);
    // Unset or disable: plain, though the server offers TLS.
    expect(await ormSsl(own.adminUrl)).toBe(false);
    expect(await clientSsl(url({ sslmode: 'disable' }))).toBe(false);
  });

  it('require: db:setup and db:migrate go through (pg read require as verify-full and refused the certificate)', { timeout: LONG }, async () => {
    const role = (user: string) => url({ sslmode: 'require' }).replace('postgres@', `${user}:${user}@`).replace('/postgres?', '/dealix_ssl?');
    const config = configFor(role('dealix_app'), role('dealix_owner'));
    await setupDatabase({ adminUrl: url({ sslmode: 'require' }), ownerUrl: config.MIGRATION_DATABASE_URL, appUrl: config.DATABASE_URL });
    expect((await migrate(config, entities)).length).toBeGreaterThan(0);
    expect(await ormSsl(config.DATABASE_URL)).toBe(true);
  });

  it('verify-ca and verify-full check the certificate against sslrootcert; verify-full also the host name', { timeout: LONG }, async () => {
    const ca = own.certFile!;
    expect(await ormSsl(url({ sslmode: 'verify-ca', sslrootcert: ca }))).toBe(true);
    expect(await clientSsl(url({ sslmode: 'verify-full', sslrootcert: ca }, 'localhost'))).toBe(true);
    // require with a root certificate verifies the chain, as libpq does.
    expect(await clientSsl(url({ sslmode: 'require', sslrootcert: ca }))).toBe(true);
    // The certificate names localhost, not 127.0.0.1.
    await expect(ormSsl(url({ sslmode: 'verify-full', sslrootcert: ca }))).rejects.toThrow(/Hostname\/IP does not match/);
    // Without its CA, a self-signed certificate is not trusted.
    await expect(clientSsl(url({ sslmode: 'verify-full' }, 'localhost'))).rejects.toThrow(/self[- ]signed certificate/);
  });
});
