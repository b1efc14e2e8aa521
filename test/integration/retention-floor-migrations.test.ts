/**
 * The two migrations of session sysdel on a database that has history, as an upgrade meets them:
 * `webhook_delivery_retention_floor` (the system role's delete policy keeps a settled delivery 24 hours)
 * and `retention_clock` (the trigger `updated_at_not_backdated` on durable_runs and webhook_deliveries:
 * the application role cannot backdate the time those floors read). Deliveries settled before them are
 * kept or deleted by their age; a run that waited three days, ended after them by the application role
 * without writing `updated_at`, is not deleted; rows already there are not rewritten; both new functions
 * run with the fixed search_path; the schema matches the entities (db:check). Down and up again too.
 */
import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createOrm } from '../../src/platform/db/orm.ts';
import { schemaStatus, migrate } from '../../src/platform/db/migrate.ts';
import { entities } from '../../src/entities.ts';
import { migrateUpTo, migrationTestDatabase } from '../helpers/migrations.ts';
import { systemEm, tenantEm } from '../../src/platform/db/tenant-em.ts';

const PREVIOUS = 'Migration20261206110500_token_revocations_not_before_prune';
const THESE = ['Migration20261206111000_webhook_delivery_retention_floor', 'Migration20261206111100_retention_clock'];
const FUNCTIONS = ['durable_runs_updated_at_not_backdated_fn', 'webhook_deliveries_updated_at_not_backdated_fn'];

const database = migrationTestDatabase();
const admin = database.admin;

/** A delivery of `tenant` in `status` whose row last moved `ago` ago, as the release before stored it. */
async function seedDelivery(tenant: string, endpoint: string, status: 'pending' | 'delivered', ago: string): Promise<string> {
  const id = randomUUID();
  await admin(
    `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, next_attempt_at, created_at, updated_at)
     values ($1, $2, $3, 'run.completed', '{}', $4, 1, case when $4 = 'pending' then now() end, now() - $5::interval - interval '1 hour', now() - $5::interval)`,
    [id, tenant, endpoint, status, ago],
  );
  return id;
}

describe('migrations webhook_delivery_retention_floor and retention_clock on an existing database', () => {
  it('keep deliveries settled less than a day ago from the system role, keep the time a run ends the database\'s, rewrite no row; db:check clean; down and up again', async () => {
    const pending = await migrateUpTo(database.config, PREVIOUS);
    expect(pending.slice(0, THESE.length)).toEqual(THESE);
    const tenant = randomUUID();
    const endpoint = randomUUID();
    await admin(
      `insert into webhook_endpoints (id, tenant_id, url, events, secret, enabled, created_by, created_at, updated_at)
       values ($1, $2, 'https://example.com/hook', '{run.completed}', 'whsec_dGVzdA==', true, 'admin-1', now(), now())`,
      [endpoint, tenant],
    );
    const recent = await seedDelivery(tenant, endpoint, 'delivered', '2 hours');
    const old = await seedDelivery(tenant, endpoint, 'delivered', '2 days');
    const owed = await seedDelivery(tenant, endpoint, 'pending', '3 days');
    const run = randomUUID();
    await admin(
      `insert into durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, correlation_id, step_count, created_at, updated_at)
       values ($1, $2, 'golden-path', 1, $3, 'waiting', 'submitter-1', '{}', 'c', 4, now() - interval '3 days', now() - interval '3 days')`,
      [run, tenant, randomUUID().replaceAll('-', '')],
    );

    expect(await migrate(database.config, entities)).toEqual(pending);
    expect(await admin(`select proname, proconfig from pg_proc where proname = any($1) order by proname`, [FUNCTIONS])).toEqual(
      FUNCTIONS.map((proname) => ({ proname, proconfig: ['search_path=pg_catalog, public, pg_temp'] })),
    );
    // Rows already there keep their time: the run still three days untouched, the owed delivery too.
    expect(await admin(`select (now() - updated_at) > interval '71 hours' as old from durable_runs where id = $1`, [run])).toEqual([{ old: true }]);
    expect(await admin(`select (now() - updated_at) > interval '71 hours' as old from webhook_deliveries where id = $1`, [owed])).toEqual([{ old: true }]);

    const app = await createOrm(database.config, { entities, poolMax: 1 });
    try {
      // The application role through the system role: the delivery settled two days ago goes, the one settled two hours ago stays.
      const deleted = await systemEm(app).transactional((tx) => tx.execute<{ id: string }[]>(`delete from webhook_deliveries where tenant_id = ? returning id`, [tenant]));
      expect(deleted.map((r) => r.id)).toEqual([old]);
      // The run that waited three days, ended by the application role without writing updated_at (nor the owed delivery's): kept.
      await tenantEm(app, tenant).transactional(async (tx) => {
        await tx.execute(`update durable_runs set status = 'cancelled', completed_at = now() where id = ?`, [run], 'run');
        await tx.execute(`update webhook_deliveries set status = 'failed', next_attempt_at = null where id = ?`, [owed], 'run');
      });
      const after = await systemEm(app).transactional(async (tx) => [
        ...(await tx.execute<{ id: string }[]>(`delete from durable_runs where id = ? returning id`, [run])),
        ...(await tx.execute<{ id: string }[]>(`delete from webhook_deliveries where id = ? returning id`, [owed])),
      ]);
      expect(after).toEqual([]);
    } finally {
      await app.close(true);
    }
    expect(await admin(`select count(*)::int as n from webhook_deliveries where id = any($1)`, [[recent, owed]])).toEqual([{ n: 2 }]);

    const check = await createOrm(database.config, { entities, role: 'owner', poolMax: 1 });
    try {
      expect(await schemaStatus(check)).toEqual({ pending: [], drift: '' });
      await check.migrator.down({ to: PREVIOUS });
      expect(await admin(`select qual from pg_policies where policyname = 'webhook_deliveries_system_retention'`)).toEqual([{ qual: expect.not.stringContaining('interval') }]);
      expect(await admin(`select count(*)::int as n from pg_trigger where tgname = 'updated_at_not_backdated'`)).toEqual([{ n: 0 }]);
      expect(await admin(`select count(*)::int as n from pg_proc where proname = any($1)`, [FUNCTIONS])).toEqual([{ n: 0 }]);
      await check.migrator.up();
      expect(await admin(`select qual from pg_policies where policyname = 'webhook_deliveries_system_retention'`)).toEqual([{ qual: expect.stringContaining("'24:00:00'::interval") }]);
      expect(await admin(`select tgrelid::regclass::text as t from pg_trigger where tgname = 'updated_at_not_backdated' order by 1`)).toEqual([{ t: 'durable_runs' }, { t: 'webhook_deliveries' }]);
      expect(await schemaStatus(check)).toEqual({ pending: [], drift: '' });
    } finally {
      await check.close(true);
    }
  });
});
