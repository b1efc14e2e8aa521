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
  afterAll(async () => {
    const admin = new pg.Client({ connectionString: TEST_ADMIN_URL });
    await admin.connect();
    for (const db of dbs) await admin.query(`DROP DATABASE IF EXISTS "${db}" WITH (FORCE)`);
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
});
