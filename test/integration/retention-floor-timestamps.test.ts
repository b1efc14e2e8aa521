import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { SYSTEM_ROLE } from '../../src/platform/db/tenant-owned.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';

/**
 * The application role is a member of the system role (it takes it by SET LOCAL ROLE for the sweeper,
 * key expiry and retention: ADR 0003, 0011), so the system role's delete policies are all that stands
 * between any statement of the application and every tenant's history. Their floor (ADR 0011, amendments
 * "A floor under retention" and "The floor's clock is the database's") must hold whatever the application
 * role writes: a settled webhook delivery is kept a day after it settled, as an ended run is a day after it
 * ended, and the `updated_at` both floors read is the database's time of the write — never a value the
 * application role backdated, and never left as it was when a run ends or a delivery settles.
 */
let db: TestDatabase;
let app: pg.Client;

beforeAll(async () => {
  db = await createTestDatabase();
  app = new pg.Client({ connectionString: db.appUrl });
  await app.connect();
});

afterAll(async () => {
  await app?.end();
  await db?.drop();
});

/** Runs `sqls` as the application role under `tenant` (and `role`, if given), in one transaction; the last one's row count, or the SQLSTATE it failed with. */
async function asApp(tenant: string, sqls: Array<[string, unknown[]?]>, role?: string): Promise<number | string> {
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

/** The system role, taken by the application role, deletes `table`'s row `id`: the rows it deleted. */
const systemDelete = (table: string, id: string) => asApp('', [[`delete from ${table} where id = $1`, [id]]], SYSTEM_ROLE);

/** An endpoint of `tenant` (as the superuser: setup only). */
async function endpoint(tenant: string): Promise<string> {
  const id = randomUUID();
  await db.admin(
    `insert into webhook_endpoints (id, tenant_id, url, events, secret, enabled, created_by, created_at, updated_at)
     values ($1, $2, 'https://example.com/hook', '{run.completed}', 'whsec_dGVzdA==', true, 'admin-1', now(), now())`,
    [id, tenant],
  );
  return id;
}

/** A delivery of `tenant` in `status` whose row last moved `ago` ago (created a day before that); as the superuser: setup only. */
async function delivery(tenant: string, status: 'pending' | 'delivered' | 'failed', ago: string): Promise<string> {
  const id = randomUUID();
  await db.admin(
    `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, next_attempt_at, delivered_at, created_at, updated_at)
     values ($1, $2, $3, 'run.completed', '{}', $4, 1, case when $4 = 'pending' then now() end, case when $4 = 'delivered' then now() - $5::interval end,
             now() - $5::interval - interval '1 day', now() - $5::interval)`,
    [id, tenant, await endpoint(tenant), status, ago],
  );
  return id;
}

describe('webhook delivery retention has a floor the application role cannot lower', () => {
  it('the system role, taken by the application role, deletes no delivery that settled less than 24 hours ago; one settled 25 hours ago it still deletes', async () => {
    const tenant = randomUUID();
    const recent = [await delivery(tenant, 'delivered', '1 second'), await delivery(tenant, 'failed', '23 hours')];
    for (const id of recent) expect(await systemDelete('webhook_deliveries', id), id).toBe(0);
    expect(await asApp('', [[`delete from webhook_deliveries where tenant_id = $1`, [tenant]]], SYSTEM_ROLE)).toBe(0);
    expect((await db.admin(`select count(*)::int as n from webhook_deliveries where id = any($1)`, [recent])).rows).toEqual([{ n: 2 }]);
    const old = await delivery(tenant, 'delivered', '25 hours');
    expect(await systemDelete('webhook_deliveries', old)).toBe(1);
  });
});
