/**
 * Migration approval_policy_change_base_policy on a database that has policy changes: each keeps every
 * column and gets a null base_policy (its base was not recorded), row-level security stays forced, and
 * the schema then matches the entities with nothing pending (what `npm run db:check` reports). Down on
 * that data drops the column alone — the changes, pending ones included, stay as the release before
 * stored them — and up again gives null once more: what base_policy recorded is not restored (a change
 * on the defaults then reads superseded, as any proposed before the column existed: ADR 0010).
 */
import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createOrm } from '../../src/platform/db/orm.ts';
import { migrate, schemaStatus } from '../../src/platform/db/migrate.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { entities } from '../../src/entities.ts';
import { migrateUpTo, migrationTestDatabase } from '../helpers/migrations.ts';

const PREVIOUS = 'Migration20261203215113_webhooks';
const THIS = 'Migration20261203220101_approval_policy_change_base_policy';
const POLICY = { class_a_max_cost: 100_000, class_a_max_payback_months: 6, class_c_min_cost: 250_000, class_c_min_payback_months: 24, sla_b_seconds: 86_400, sla_c_seconds: 259_200, currency: 'SAR' };

const database = migrationTestDatabase();
const admin = database.admin;

/** A pending change as the release before this one stored it (superuser: no RLS in the way). */
async function changeRow(tenant: string, baseVersion: number): Promise<string> {
  const id = randomUUID();
  await admin(
    `insert into approval_policy_changes (id, tenant_id, policy, base_version, loosens, status, proposed_by, created_at, expires_at)
     values ($1, $2, $3::jsonb, $4, '["class_a_max_cost"]'::jsonb, 'pending', 'admin-1', date_trunc('milliseconds', now()), date_trunc('milliseconds', now()) + interval '3 days')`,
    [id, tenant, JSON.stringify(POLICY), baseVersion],
  );
  return id;
}

const changes = async () => Object.fromEntries((await admin(`select * from approval_policy_changes`)).map((r) => [r.id as string, r]));

describe('migration approval_policy_change_base_policy', () => {
  it('gives every change a null base_policy, changes nothing else, keeps RLS forced, leaves db:check clean; down on that data drops the column alone, and up again', async () => {
    const pending = await migrateUpTo(database.config, PREVIOUS);
    expect(pending[0]).toBe(THIS);
    const [t1, t2] = [randomUUID(), randomUUID()];
    const onDefaults = await changeRow(t1, 0);
    const onVersion = await changeRow(t2, 1);
    const before = await changes();

    expect(await migrate(database.config, entities)).toEqual(pending);
    const after = await changes();
    for (const id of [onDefaults, onVersion]) expect(after[id]).toEqual({ ...before[id], base_policy: null });
    expect(await admin(`select relforcerowsecurity from pg_class where relname = 'approval_policy_changes'`)).toEqual([{ relforcerowsecurity: true }]);

    const app = await createOrm(database.config, { entities, role: 'app', poolMax: 1 });
    try {
      // The application role still sees its tenant's change alone, with the new column.
      expect(await tenantEm(app, t1).execute('select id, base_policy from approval_policy_changes')).toEqual([{ id: onDefaults, base_policy: null }]);
    } finally {
      await app.close(true);
    }
    const check = await createOrm(database.config, { entities, role: 'owner', poolMax: 1 });
    try {
      expect(await schemaStatus(check)).toEqual({ pending: [], drift: '' });
      await admin(`update approval_policy_changes set base_policy = $1::jsonb where id = $2`, [JSON.stringify({ ...POLICY, class_a_max_cost: 50_000 }), onDefaults]);

      await check.migrator.down({ to: PREVIOUS });
      expect(await changes()).toEqual(before);
      await check.migrator.up();
      const again = await changes();
      for (const id of [onDefaults, onVersion]) expect(again[id]).toEqual({ ...before[id], base_policy: null });
      expect(await admin(`select relforcerowsecurity from pg_class where relname = 'approval_policy_changes'`)).toEqual([{ relforcerowsecurity: true }]);
      expect(await schemaStatus(check)).toEqual({ pending: [], drift: '' });
    } finally {
      await check.close(true);
    }
  });
});
