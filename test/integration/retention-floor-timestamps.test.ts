import { beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { SYSTEM_ROLE } from '../../src/platform/db/tenant-owned.ts';
import { seedRun, type TestDatabase } from '../helpers/db.ts';
import { waitFor } from '../helpers/poll.ts';
import { appRoleDatabase, asAppRole } from '../helpers/app-role-client.ts';

/**
 * The application role is a member of the system role (it takes it by SET LOCAL ROLE for the sweeper,
 * key expiry and retention: ADR 0003, 0011), so the system role's delete policies are all that stands
 * between any statement of the application and every tenant's history. Their floor (ADR 0011, amendments
 * "A floor under retention" and "The floor's clock is the database's") must hold whatever the application
 * role writes: a settled webhook delivery is kept a day after it settled, as an ended run is a day after it
 * ended, and the `updated_at` both floors read is the database's time of the write — never a value the
 * application role backdated, and never left as it was when a run ends or a delivery settles.
 */
const suite = appRoleDatabase();
let db: TestDatabase;
beforeAll(() => void ({ db } = suite));

/** Runs `sqls` as the application role under `tenant` (and `role`, if given), in one transaction; the last one's row count, or the SQLSTATE it failed with. */
const asApp = (tenant: string, sqls: Array<[string, unknown[]?]>, role?: string): Promise<number | string> => asAppRole(suite.app, tenant, sqls, role);

/** The system role, taken by the application role, deletes `table`'s row `id`: the rows it deleted. */
const systemDelete = (table: string, id: string) => asApp('', [[`delete from ${table} where id = $1`, [id]]], SYSTEM_ROLE);

/** How long ago the row's updated_at is, in hours (as the superuser reads it). */
async function hoursAgo(table: string, id: string): Promise<number> {
  const { rows } = await db.admin(`select extract(epoch from now() - updated_at) / 3600 as h from ${table} where id = $1`, [id]);
  return Number(rows[0].h);
}

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

/** An active run of `tenant` in `status` whose row last moved `ago` ago (a run waiting days for its approver); as the superuser: setup only. */
async function activeRun(tenant: string, status: 'pending' | 'running' | 'waiting', ago: string): Promise<string> {
  const run = await seedRun(db, tenant);
  await db.admin(`update durable_runs set status = $2, created_at = now() - $3::interval - interval '1 hour', updated_at = now() - $3::interval where id = $1`, [run, status, ago]);
  return run;
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

  it('a delivery the application role settles or inserts settled, backdated or not, is its settling time old: the system role deletes none of them', async () => {
    const tenant = randomUUID();
    const ep = await endpoint(tenant);
    // Pending for days, settled now with its old updated_at left as it was, or backdated.
    const kept = await delivery(tenant, 'pending', '3 days');
    expect(await asApp(tenant, [[`update webhook_deliveries set status = 'failed', next_attempt_at = null where id = $1`, [kept]]])).toBe(1);
    const backdated = await delivery(tenant, 'pending', '3 days');
    expect(await asApp(tenant, [[`update webhook_deliveries set status = 'delivered', next_attempt_at = null, updated_at = now() - interval '2 days' where id = $1`, [backdated]]])).toBe(1);
    // Settled a moment ago, its time moved back.
    const moved = await delivery(tenant, 'delivered', '1 second');
    expect(await asApp(tenant, [[`update webhook_deliveries set updated_at = '2000-01-01' where id = $1`, [moved]]])).toBe(1);
    // Inserted settled, two days old.
    const inserted = randomUUID();
    expect(
      await asApp(tenant, [[
        `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, created_at, updated_at)
         values ($1, $2, $3, 'run.completed', '{}', 'delivered', 1, now() - interval '3 days', now() - interval '2 days')`,
        [inserted, tenant, ep],
      ]]),
    ).toBe(1);
    for (const id of [kept, backdated, moved, inserted]) {
      expect(await systemDelete('webhook_deliveries', id), id).toBe(0);
      expect(await hoursAgo('webhook_deliveries', id), id).toBeLessThan(1);
    }
  });

  it('an update that neither settles a delivery nor writes its updated_at leaves updated_at as it was; the superuser (repairs, tests) writes it as given', async () => {
    const tenant = randomUUID();
    const id = await delivery(tenant, 'failed', '30 hours');
    expect(await asApp(tenant, [[`update webhook_deliveries set last_error = 'noted' where id = $1`, [id]]])).toBe(1);
    expect(await hoursAgo('webhook_deliveries', id)).toBeGreaterThan(29);
    await db.admin(`update webhook_deliveries set updated_at = now() - interval '40 hours' where id = $1`, [id]);
    expect(await hoursAgo('webhook_deliveries', id)).toBeGreaterThan(39);
  });
});

describe("the run retention floor reads a time the application role cannot backdate", () => {
  it('an active run the application role ends with its end backdated, or with its old updated_at left as it was, is not deleted by the system role', async () => {
    const tenant = randomUUID();
    const backdated = await activeRun(tenant, 'waiting', '3 days');
    expect(
      await asApp(tenant, [[`update durable_runs set status = 'cancelled', completed_at = now() - interval '2 days', updated_at = now() - interval '2 days' where id = $1`, [backdated]]]),
    ).toBe(1);
    const untouched = await activeRun(tenant, 'running', '3 days');
    expect(await asApp(tenant, [[`update durable_runs set status = 'failed', completed_at = now() - interval '2 days' where id = $1`, [untouched]]])).toBe(1);
    // Backdated first while active, ended in a second statement.
    const twoSteps = await activeRun(tenant, 'pending', '1 minute');
    expect(
      await asApp(tenant, [
        [`update durable_runs set updated_at = now() - interval '2 days' where id = $1`, [twoSteps]],
        [`update durable_runs set status = 'cancelled', completed_at = now() - interval '2 days', updated_at = updated_at where id = $1`, [twoSteps]],
      ]),
    ).toBe(1);
    for (const id of [backdated, untouched, twoSteps]) {
      expect(await systemDelete('durable_runs', id), id).toBe(0);
      expect(await hoursAgo('durable_runs', id), id).toBeLessThan(1);
    }
    expect((await db.admin(`select count(*)::int as n from durable_runs where id = any($1)`, [[backdated, untouched, twoSteps]])).rows).toEqual([{ n: 3 }]);
  });

  it('a run the application role inserts already ended and backdated is not deleted by the system role', async () => {
    const tenant = randomUUID();
    const id = randomUUID();
    expect(
      await asApp(tenant, [[
        `insert into durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, correlation_id, step_count, created_at, updated_at, completed_at)
         values ($1, $2, 'golden-path', 1, $3, 'completed', 'submitter-1', '{}', 'c', 4, now() - interval '3 days', now() - interval '2 days', now() - interval '2 days')`,
        [id, tenant, randomUUID().replaceAll('-', '')],
      ]]),
    ).toBe(1);
    expect(await systemDelete('durable_runs', id)).toBe(0);
    expect(await hoursAgo('durable_runs', id)).toBeLessThan(1);
  });

  it("the statements that neither move a run's status nor write its updated_at (a lease, a crash count, a read-timeout count) leave it as it was: the sweeper's age of the run", async () => {
    const tenant = randomUUID();
    const id = await activeRun(tenant, 'running', '2 hours');
    expect(
      await asApp(tenant, [[
        `update durable_runs set lease_owner = 'worker-1', lease_expires_at = now() + interval '2 seconds', crash_seq = 1, crash_count = crash_count + 1,
                read_timeout_jobs = read_timeout_jobs + 1, read_timeout_seq = 1 where id = $1`,
        [id],
      ]]),
    ).toBe(1);
    expect(await hoursAgo('durable_runs', id)).toBeGreaterThan(1.9);
  });
});

describe("the floor's clock is the deleting transaction's start", () => {
  it('a delete in a transaction begun before a delivery turned a day old deletes nothing, even once it has: now() is the earliest clock, so the strictest bound; a transaction begun later deletes it', { timeout: 120_000 }, async () => {
    const tenant = randomUUID();
    const { app } = suite;
    await app.query('BEGIN');
    try {
      await app.query(`select set_config('app.tenant_id', '', true)`);
      const { rows } = await app.query(`select now() as began`);
      const began = rows[0].began as Date;
      // Settled a day less two seconds before the transaction began (the superuser's time is kept: setup only).
      const id = await delivery(tenant, 'delivered', '1 second');
      await db.admin(`update webhook_deliveries set updated_at = $2::timestamptz - interval '24 hours' + interval '2 seconds' where id = $1`, [id, began]);
      // Wait (polling the database's clock, no sleep) until the delivery is more than a day old by the statement's clock.
      await waitFor(async () => (await db.admin(`select clock_timestamp() > $1::timestamptz + interval '2.5 seconds' as past`, [began])).rows[0].past, {
        timeoutMs: 60_000,
        what: 'the database clock to pass the floor',
      });
      // By statement_timestamp() or clock_timestamp() it is past the floor now; by now() it is not.
      await app.query(`set local role ${SYSTEM_ROLE}`);
      expect((await app.query(`delete from webhook_deliveries where id = $1`, [id])).rowCount).toBe(0);
      await app.query('COMMIT');
      expect(await systemDelete('webhook_deliveries', id)).toBe(1);
    } finally {
      await app.query('ROLLBACK').catch(() => {});
    }
  });
});
