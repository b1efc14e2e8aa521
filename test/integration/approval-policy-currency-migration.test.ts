/**
 * Migration approval_policy_currency_updated_by on a database that has tenants' policies: each keeps
 * its thresholds and SLAs and gets currency SAR (what the policies were written for) and a null
 * updated_by (no admin was recorded), row-level security stays forced, and the schema then matches
 * the entities with nothing pending (what `npm run db:check` reports). Down and up again too.
 */
import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createOrm } from '../../src/platform/db/orm.ts';
import { migrate, schemaStatus } from '../../src/platform/db/migrate.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { entities } from '../../src/entities.ts';
import { migrateUpTo, migrationTestDatabase } from '../helpers/migrations.ts';

const PREVIOUS = 'Migration20261203134431_retry_history';
const THIS = 'Migration20261203161828_approval_policy_currency_updated_by';
/** What the migrations after this one, run with it, add to each policy (approval_policy_changes). */
const LATER = { approved_by: null, version: 1 };

const database = migrationTestDatabase();
const admin = database.admin;

/** A tenant's policy as the release before this one stored it (superuser: no RLS in the way). */
async function policyRow(tenant: string, cCost: number): Promise<void> {
  await admin(
    `insert into approval_policies (id, tenant_id, class_amax_cost, class_amax_payback_months, class_cmin_cost, class_cmin_payback_months, sla_bseconds, sla_cseconds, updated_at)
     values ($1, $2, 1000, 2, $3, 30, 600, 1200, now() - interval '1 day')`,
    [randomUUID(), tenant, cCost],
  );
}

const policies = async () => Object.fromEntries((await admin(`select * from approval_policies`)).map((r) => [r.tenant_id as string, r]));

describe('migration approval_policy_currency_updated_by', () => {
  it("gives every tenant's policy currency SAR and a null updated_by, changes nothing else, keeps RLS forced, and leaves db:check clean; down and up again", async () => {
    // This migration comes first of those pending after PREVIOUS; later ones run with it.
    const pending = await migrateUpTo(database.config, PREVIOUS);
    expect(pending[0]).toBe(THIS);
    const [t1, t2] = [randomUUID(), randomUUID()];
    await policyRow(t1, 300_000);
    await policyRow(t2, 400_000);
    const before = await policies();

    // What `npm run db:migrate` runs (as the owner), then what `npm run db:check` reads.
    expect(await migrate(database.config, entities)).toEqual(pending);
    const after = await policies();
    // (The later approval_policy_changes adds approved_by, null, and version 1 to every policy.)
    for (const t of [t1, t2]) expect(after[t]).toEqual({ ...before[t], currency: 'SAR', updated_by: null, ...LATER });
    expect(await admin(`select relforcerowsecurity from pg_class where relname = 'approval_policies'`)).toEqual([{ relforcerowsecurity: true }]);

    const app = await createOrm(database.config, { entities, role: 'app', poolMax: 1 });
    try {
      // The application role still sees its tenant's policy alone, with the new columns.
      expect(await tenantEm(app, t1).execute('select tenant_id, currency, updated_by from approval_policies')).toEqual([{ tenant_id: t1, currency: 'SAR', updated_by: null }]);
    } finally {
      await app.close(true);
    }
    const check = await createOrm(database.config, { entities, role: 'owner', poolMax: 1 });
    try {
      expect(await schemaStatus(check)).toEqual({ pending: [], drift: '' });
      await admin(`update approval_policies set currency = 'KWD', updated_by = 'admin-1' where tenant_id = $1`, [t1]);

      // Down: the columns go, the rest is as it was; up gives SAR and null again.
      await check.migrator.down({ to: PREVIOUS });
      const down = await policies();
      for (const t of [t1, t2]) expect(down[t]).toEqual(before[t]);
      await check.migrator.up();
      const again = await policies();
      for (const t of [t1, t2]) expect(again[t]).toEqual({ ...before[t], currency: 'SAR', updated_by: null, ...LATER });
      expect(await admin(`select relforcerowsecurity from pg_class where relname = 'approval_policies'`)).toEqual([{ relforcerowsecurity: true }]);
      expect(await schemaStatus(check)).toEqual({ pending: [], drift: '' });
    } finally {
      await check.close(true);
    }
  });
});
