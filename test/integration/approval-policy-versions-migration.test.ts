/**
 * Migration approval_policy_versions on a database whose tenants have policies: the history of policy
 * versions starts with each tenant's policy in force, one row per tenant (its version, thresholds,
 * SLAs, currency, updated_at, updated_by, approved_by as the row reads), under forced row-level security
 * (the application role sees its own tenant's rows, may insert and read them, never update or delete
 * one); approval requests get a null policy_version (their version was not recorded); the history's
 * trigger on approval_policies is a constraint trigger deferred to the commit; the schema then matches
 * the entities with nothing pending. Down drops the trigger, its function, the table and the
 * column; up again backfills the same.
 */
import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createOrm } from '../../src/platform/db/orm.ts';
import { migrate, schemaStatus } from '../../src/platform/db/migrate.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { entities } from '../../src/entities.ts';
import { migrateUpTo, migrationTestDatabase } from '../helpers/migrations.ts';
import { sqlState } from '../helpers/sql-state.ts';

const PREVIOUS = 'Migration20261206021816_completed_checkpoints_kept';
const THIS = 'Migration20261206033000_approval_policy_versions';
const COLUMNS = `tenant_id, version, class_amax_cost, class_amax_payback_months, class_cmin_cost, class_cmin_payback_months, sla_bseconds, sla_cseconds, currency, updated_at, updated_by, approved_by`;

const database = migrationTestDatabase();
const admin = database.admin;

/** A tenant's policy in force as the release before this one stored it (superuser: no RLS in the way). */
async function policyRow(tenant: string, version: number, approvedBy: string | null): Promise<void> {
  await admin(
    `insert into approval_policies (id, tenant_id, class_amax_cost, class_amax_payback_months, class_cmin_cost, class_cmin_payback_months, sla_bseconds, sla_cseconds, currency, updated_at, updated_by, approved_by, version)
     values ($1, $2, 40000, 6, 300000, 24, 7200, 14400, 'SAR', now() - interval '1 day', 'admin-1', $3, $4)`,
    [randomUUID(), tenant, approvedBy, version],
  );
}

describe('migration approval_policy_versions', () => {
  it("backfills each tenant's policy in force as its first history row, under forced RLS, append-only for the application role; db:check clean; down and up again", async () => {
    const pending = await migrateUpTo(database.config, PREVIOUS);
    expect(pending[0]).toBe(THIS);
    const [t1, t2] = [randomUUID(), randomUUID()];
    await policyRow(t1, 3, 'admin-2');
    await policyRow(t2, 1, null);
    const current = await admin(`select ${COLUMNS} from approval_policies order by tenant_id`);

    expect(await migrate(database.config, entities)).toEqual(pending);
    const backfilled = async () => admin(`select ${COLUMNS} from approval_policy_versions order by tenant_id`);
    expect(await backfilled()).toEqual(current);
    for (const table of ['approval_policy_versions', 'approval_policies']) {
      expect(await admin(`select relrowsecurity, relforcerowsecurity from pg_class where relname = $1`, [table]), table).toEqual([{ relrowsecurity: true, relforcerowsecurity: true }]);
    }
    expect(await admin(`select count(*)::int as n from approval_requests where policy_version is not null`)).toEqual([{ n: 0 }]);
    // Deferred to the commit, so an approved change's restamp (after its upsert) is the time recorded: the
    // schema generator would not see a plain trigger in its place (it compares the timing, events and body).
    const recordTrigger = async () =>
      admin(`select tgname, tgdeferrable, tginitdeferred from pg_trigger where tgrelid = 'approval_policies'::regclass and not tgisinternal and tgname = 'record_version'`);
    expect(await recordTrigger()).toEqual([{ tgname: 'record_version', tgdeferrable: true, tginitdeferred: true }]);
    // The guard the next migration adds on the history (approval_policy_version_guard), deferred to the commit as well.
    expect(await admin(`select tgname, tgdeferrable, tginitdeferred from pg_trigger where tgrelid = 'approval_policy_versions'::regclass and not tgisinternal`))
      .toEqual([{ tgname: 'is_the_policy', tgdeferrable: true, tginitdeferred: true }]);

    const app = await createOrm(database.config, { entities, role: 'app', poolMax: 1 });
    try {
      const em = tenantEm(app, t1);
      expect(await em.execute('select tenant_id, version from approval_policy_versions')).toEqual([{ tenant_id: t1, version: 3 }]);
      expect(await sqlState(em.execute(`update approval_policy_versions set class_cmin_cost = 1`))).toBe('42501');
      expect(await sqlState(em.execute(`delete from approval_policy_versions`))).toBe('42501');
      expect(await sqlState(em.execute(`update approval_requests set policy_version = 1`))).toBe('42501');
    } finally {
      await app.close(true);
    }
    expect(await backfilled()).toEqual(current);

    const check = await createOrm(database.config, { entities, role: 'owner', poolMax: 1 });
    try {
      expect(await schemaStatus(check)).toEqual({ pending: [], drift: '' });
      await check.migrator.down({ to: PREVIOUS });
      expect(await admin(`select to_regclass('approval_policy_versions') as t`)).toEqual([{ t: null }]);
      expect(await recordTrigger()).toEqual([]);
      expect(await admin(`select proname from pg_proc where proname = 'approval_policies_record_version_fn'`)).toEqual([]);
      expect(await admin(`select ${COLUMNS} from approval_policies order by tenant_id`)).toEqual(current);
      await check.migrator.up();
      expect(await backfilled()).toEqual(current);
      expect(await recordTrigger()).toEqual([{ tgname: 'record_version', tgdeferrable: true, tginitdeferred: true }]);
      expect(await schemaStatus(check)).toEqual({ pending: [], drift: '' });
    } finally {
      await check.close(true);
    }
  });
});
