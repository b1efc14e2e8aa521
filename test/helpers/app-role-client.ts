import { afterAll, beforeAll } from 'vitest';
import pg from 'pg';
import { createTestDatabase, type TestDatabase } from './db.ts';

/**
 * For the file (or describe) that calls it: a test database (createTestDatabase) and a client of it
 * connected as the application role, made before its tests, closed and dropped after them. Read `db`
 * and `app` from the returned object inside hooks and tests (they are set by then).
 */
export function appRoleDatabase(): { db: TestDatabase; app: pg.Client } {
  const suite = {} as { db: TestDatabase; app: pg.Client };
  beforeAll(async () => {
    suite.db = await createTestDatabase();
    suite.app = new pg.Client({ connectionString: suite.db.appUrl });
    await suite.app.connect();
  });
  afterAll(async () => {
    await suite.app?.end();
    await suite.db?.drop();
  });
  return suite;
}

/**
 * Runs `sqls` on `app` (a client connected as the application role) under `tenant` (and `role`, if
 * given), in one transaction of their own: the last one's row count, or the SQLSTATE it failed with
 * (the transaction rolled back).
 */
export async function asAppRole(app: pg.Client, tenant: string, sqls: Array<[string, unknown[]?]>, role?: string): Promise<number | string> {
  await app.query('BEGIN');
  try {
    await app.query(`select set_config('app.tenant_id', $1, true)`, [tenant]);
    if (role) await app.query(`set local role ${role}`);
    let count = 0;
    for (const [sql, params] of sqls) count = (await app.query(sql, params ?? [])).rowCount ?? 0;
    await app.query('COMMIT');
    return count;
  } catch (err) {
    await app.query('ROLLBACK');
    return (err as { code?: string }).code ?? String(err);
  }
}
