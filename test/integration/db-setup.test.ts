/**
 * `npm run db:setup` (setupDatabase) against the real server: two setups at once — two test runs
 * sharing the server, two deploy hooks — both succeed. Without the setup lock PostgreSQL fails the
 * loser's ALTER ROLE on the shared role rows with "tuple concurrently updated".
 */
import { afterAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { randomBytes } from 'node:crypto';
import { setupDatabase } from '../../src/platform/db/roles.ts';
import { TEST_ADMIN_URL, TEST_APP, TEST_OWNER, pgUrl } from '../helpers/env.ts';

describe('database setup', () => {
  const dbs: string[] = [];
  const roles: string[] = [];
  afterAll(async () => {
    const admin = new pg.Client({ connectionString: TEST_ADMIN_URL });
    await admin.connect();
    // Each drop on its own: one that fails leaves none of the others (cluster-wide roles above all) behind.
    const failed: unknown[] = [];
    for (const db of dbs) await admin.query(`DROP DATABASE IF EXISTS "${db}" WITH (FORCE)`).catch((e: unknown) => failed.push(e));
    // Roles are cluster-wide: dropped once the databases holding their grants are gone.
    for (const role of roles) await admin.query(`DROP ROLE IF EXISTS "${role}"`).catch((e: unknown) => failed.push(e));
    await admin.end();
    if (failed.length) throw new AggregateError(failed, 'database setup: cleanup failed');
  });

  it('six setups at once, of one database and of others, all succeed and leave the roles and grants in place', { timeout: 60_000 }, async () => {
    const shared = `dealix_t_setup_${randomBytes(4).toString('hex')}`;
    const own = Array.from({ length: 3 }, () => `dealix_t_setup_${randomBytes(4).toString('hex')}`);
    dbs.push(shared, ...own);
    const setup = (db: string) => setupDatabase({ adminUrl: TEST_ADMIN_URL, ownerUrl: pgUrl(TEST_OWNER, db), appUrl: pgUrl(TEST_APP, db) });
    const results = await Promise.allSettled([...own, shared, shared, shared].map(setup));
    expect(results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason))).toEqual([]);
    // Each database is there and the application role can connect to it (its CONNECT grant holds).
    for (const db of [shared, ...own]) {
      const app = new pg.Client({ connectionString: pgUrl(TEST_APP, db) });
      await app.connect();
      const { rows } = await app.query<{ db: string; owner: boolean }>(`select current_database() as db, pg_has_role(current_user, $1, 'MEMBER') as owner`, [TEST_OWNER.user]);
      await app.end();
      expect(rows).toEqual([{ db, owner: false }]);
    }
  });

  /** A temporary stand-in for dealix_app (cluster-wide, shared by every test run), made as `attrs` say; setup is told it is the application role. */
  async function cloneAppRole(admin: pg.Client, attrs: string) {
    const app = { user: `dealix_t_setup_app_${randomBytes(4).toString('hex')}`, password: 'setup-temp-role' };
    const db = `dealix_t_setup_${randomBytes(4).toString('hex')}`;
    roles.push(app.user);
    dbs.push(db);
    await admin.query(`CREATE ROLE ${app.user} ${/\bNOLOGIN\b/.test(attrs) ? '' : 'LOGIN '}PASSWORD '${app.password}' NOSUPERUSER NOINHERIT ${attrs}`);
    return { app, db, setup: () => setupDatabase({ adminUrl: TEST_ADMIN_URL, ownerUrl: pgUrl(TEST_OWNER, db), appUrl: pgUrl(app, db) }) };
  }
  const attributesOf = async (admin: pg.Client, role: string) =>
    (
      await admin.query(
        `select rolreplication, rolconnlimit, rolvaliduntil, rolsuper, rolbypassrls, rolcreatedb, rolcreaterole, rolinherit, rolcanlogin from pg_roles where rolname = $1`,
        [role],
      )
    ).rows[0];
  const membershipsOf = async (admin: pg.Client, role: string) =>
    (
      await admin.query<{ rolname: string }>(
        `select r.rolname from pg_auth_members m join pg_roles r on r.oid = m.roleid where m.member = (select oid from pg_roles where rolname = $1) order by 1`,
        [role],
      )
    ).rows.map((m) => m.rolname);

  it("puts an existing application role back as ADR 0001 designs it — NOREPLICATION, NOCREATEDB, NOCREATEROLE, a member of the system and operator roles only — and keeps the expiry and connection limit an operator gave it", { timeout: 60_000 }, async () => {
    const admin = new pg.Client({ connectionString: TEST_ADMIN_URL });
    await admin.connect();
    const until = (await admin.query<{ until: Date }>(`select date_trunc('second', now() + interval '30 days') as until`)).rows[0]!.until;
    let clone: Awaited<ReturnType<typeof cloneAppRole>>;
    try {
      // As a DBA's hand, or an older cluster, left it (setup used to say "already in place" and change none of it);
      // the expiry and the cap are a shared cluster's operator's, deliberate (setup used to lift both).
      clone = await cloneAppRole(admin, `REPLICATION CREATEDB CREATEROLE CONNECTION LIMIT 50 VALID UNTIL '${until.toISOString()}'`);
      await admin.query(`GRANT pg_execute_server_program, pg_read_server_files, pg_read_all_data TO ${clone.app.user}`);
      await clone.setup();
      expect(await attributesOf(admin, clone.app.user)).toEqual({ rolreplication: false, rolconnlimit: 50, rolvaliduntil: until, rolsuper: false, rolbypassrls: false, rolcreatedb: false, rolcreaterole: false, rolinherit: false, rolcanlogin: true });
      expect(await membershipsOf(admin, clone.app.user)).toEqual(['dealix_operator', 'dealix_system']);
    } finally {
      await admin.end();
    }
    // It can log in.
    const c = new pg.Client({ connectionString: pgUrl(clone.app, clone.db) });
    await c.connect();
    await c.end();
  });

  it('a new role is made without connection limit or expiry', { timeout: 60_000 }, async () => {
    const app = { user: `dealix_t_setup_app_${randomBytes(4).toString('hex')}`, password: 'setup-temp-role' };
    const db = `dealix_t_setup_${randomBytes(4).toString('hex')}`;
    roles.push(app.user);
    dbs.push(db);
    expect(await setupDatabase({ adminUrl: TEST_ADMIN_URL, ownerUrl: pgUrl(TEST_OWNER, db), appUrl: pgUrl(app, db) })).toContain(`created role ${app.user}`);
    const admin = new pg.Client({ connectionString: TEST_ADMIN_URL });
    await admin.connect();
    try {
      expect(await attributesOf(admin, app.user)).toMatchObject({ rolconnlimit: -1, rolvaliduntil: Infinity, rolreplication: false, rolcanlogin: true });
    } finally {
      await admin.end();
    }
  });

  it.each([
    ['an expired password (VALID UNTIL 2000)', `VALID UNTIL '2000-01-01'`, /password expired at 2000-01-01.*VALID UNTIL 'infinity'/],
    ['CONNECTION LIMIT 0', 'CONNECTION LIMIT 0', /CONNECTION LIMIT 0: it cannot connect/],
    // The plainest lock-out of all (setup made it LOGIN again, and set the URL's password).
    ['NOLOGIN', 'NOLOGIN', /is NOLOGIN: it cannot log in.*ALTER ROLE "dealix_t_setup_app_[0-9a-f]+" LOGIN/],
  ])('an existing application role that cannot log in — %s — is refused with the fix, and nothing is changed (not lifted behind the operator\'s back)', { timeout: 60_000 }, async (_, attrs, reason) => {
    const admin = new pg.Client({ connectionString: TEST_ADMIN_URL });
    await admin.connect();
    try {
      const clone = await cloneAppRole(admin, `REPLICATION ${attrs}`);
      const before = await attributesOf(admin, clone.app.user);
      const refused = await clone.setup().then(() => undefined, (e: unknown) => e as Error);
      expect(refused?.message).toMatch(/^db:setup changed nothing: role dealix_t_setup_app_/);
      expect(refused?.message).toMatch(reason);
      expect(await attributesOf(admin, clone.app.user)).toEqual(before);
      expect(await membershipsOf(admin, clone.app.user)).toEqual([]);
      expect((await admin.query('select 1 from pg_database where datname = $1', [clone.db])).rowCount).toBe(0);
    } finally {
      await admin.end();
    }
  });
});
