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
    for (const db of dbs) await admin.query(`DROP DATABASE IF EXISTS "${db}" WITH (FORCE)`);
    // Roles are cluster-wide: dropped once the databases holding their grants are gone.
    for (const role of roles) await admin.query(`DROP ROLE IF EXISTS "${role}"`);
    await admin.end();
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

  it("puts an existing application role back as ADR 0001 designs it: NOREPLICATION, no connection limit, no expiry, a member of the system and operator roles only", { timeout: 60_000 }, async () => {
    // A temporary stand-in for dealix_app (cluster-wide, shared by every test run): setup is told it is the application role.
    const app = { user: `dealix_t_setup_app_${randomBytes(4).toString('hex')}`, password: 'setup-temp-role' };
    const db = `dealix_t_setup_${randomBytes(4).toString('hex')}`;
    roles.push(app.user);
    dbs.push(db);
    const admin = new pg.Client({ connectionString: TEST_ADMIN_URL });
    await admin.connect();
    try {
      // As a DBA's hand, or an older cluster, left it; setup used to say "already in place" and change none of it.
      await admin.query(`CREATE ROLE ${app.user} LOGIN PASSWORD '${app.password}' NOSUPERUSER NOINHERIT REPLICATION CONNECTION LIMIT 1 VALID UNTIL '2000-01-01'`);
      await admin.query(`GRANT pg_execute_server_program, pg_read_server_files, pg_read_all_data TO ${app.user}`);
      await setupDatabase({ adminUrl: TEST_ADMIN_URL, ownerUrl: pgUrl(TEST_OWNER, db), appUrl: pgUrl(app, db) });
      const { rows: [attrs] } = await admin.query(
        `select rolreplication, rolconnlimit, rolvaliduntil, rolsuper, rolbypassrls, rolcreatedb, rolcreaterole, rolinherit, rolcanlogin from pg_roles where rolname = $1`,
        [app.user],
      );
      expect(attrs).toEqual({ rolreplication: false, rolconnlimit: -1, rolvaliduntil: Infinity, rolsuper: false, rolbypassrls: false, rolcreatedb: false, rolcreaterole: false, rolinherit: false, rolcanlogin: true });
      const { rows: members } = await admin.query<{ rolname: string }>(
        `select r.rolname from pg_auth_members m join pg_roles r on r.oid = m.roleid where m.member = (select oid from pg_roles where rolname = $1) order by 1`,
        [app.user],
      );
      expect(members.map((m) => m.rolname)).toEqual(['dealix_operator', 'dealix_system']);
    } finally {
      await admin.end();
    }
    // It can log in again (its password no longer expired in 2000).
    const c = new pg.Client({ connectionString: pgUrl(app, db) });
    await c.connect();
    await c.end();
  });
});
