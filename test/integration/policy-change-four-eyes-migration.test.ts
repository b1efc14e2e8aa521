/**
 * The migration `policy_change_four_eyes` on a database that has policy changes, as an upgrade meets it
 * (ADR 0010, amendment "four eyes in the database"): the trigger `four_eyes` on `approval_policy_changes`.
 * Rows already there are not checked nor rewritten; a change pending before it is decided afterwards as the
 * API writes it (a second admin, at its statement's time), one decided before it is final; its function
 * runs with the fixed search_path; the schema matches the entities (db:check). Down and up again too.
 */
import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createOrm } from '../../src/platform/db/orm.ts';
import { schemaStatus, migrate } from '../../src/platform/db/migrate.ts';
import { entities } from '../../src/entities.ts';
import { migrateUpTo, migrationTestDatabase } from '../helpers/migrations.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { sqlState } from '../helpers/sql-state.ts';

const PREVIOUS = 'Migration20261206140620_token_age_limits';
const THIS = 'Migration20261206140745_policy_change_four_eyes';

const database = migrationTestDatabase();
const admin = database.admin;

/** A change of `tenant` as the release before stored it (the superuser: setup only), `status` and decision as given. */
async function seedChange(tenant: string, status: string, decidedBy: string | null): Promise<string> {
  const id = randomUUID();
  await admin(
    `insert into approval_policy_changes (id, tenant_id, policy, base_version, base_policy, loosens, status, proposed_by, created_at, expires_at, decided_by, decided_at)
     values ($1, $2, '{"class_a_max_cost": 100000}', 0, null, '["class_a_max_cost"]', $3, 'admin-1', now() - interval '1 hour', now() + interval '1 day', $4,
             case when $3 = 'pending' then null else now() - interval '30 minutes' end)`,
    [id, tenant, status, decidedBy],
  );
  return id;
}

describe('migration policy_change_four_eyes on an existing database', () => {
  it('checks no row already there; a change pending before it is approved by a second admin after it, one decided before it is final; db:check clean; down and up again', async () => {
    const pending = await migrateUpTo(database.config, PREVIOUS);
    expect(pending[0]).toBe(THIS);
    const tenant = randomUUID();
    // A change decided before the trigger, by its own proposer (what the trigger refuses from now on): kept as it is.
    const selfApproved = await seedChange(tenant, 'approved', 'admin-1');
    const open = await seedChange(tenant, 'pending', null);
    const rows = () => admin(`select id, status, decided_by, decided_at from approval_policy_changes where tenant_id = $1 order by id`, [tenant]);
    const before = await rows();

    expect(await migrate(database.config, entities)).toEqual(pending);
    expect(await rows()).toEqual(before);
    expect(await admin(`select proconfig from pg_proc where proname = 'approval_policy_changes_four_eyes_fn'`)).toEqual([{ proconfig: ['search_path=pg_catalog, public, pg_temp'] }]);

    const app = await createOrm(database.config, { entities, poolMax: 1 });
    try {
      const decide = (id: string, by: string) =>
        tenantEm(app, tenant).transactional((tx) =>
          tx.execute(`update approval_policy_changes set status = 'approved', decided_by = ?, decided_at = statement_timestamp() where id = ?`, [by, id], 'run'),
        );
      expect(await sqlState(decide(open, 'admin-1')), 'its proposer').toBe('42501');
      expect(await sqlState(decide(selfApproved, 'admin-2')), 'decided before the migration').toBe('42501');
      expect(await sqlState(decide(open, 'admin-2')), 'a second admin').toBe('succeeded');
    } finally {
      await app.close(true);
    }
    expect((await rows()).map((r) => [r.id, r.status, r.decided_by])).toEqual(
      [
        [selfApproved, 'approved', 'admin-1'],
        [open, 'approved', 'admin-2'],
      ].sort((a, b) => (a[0]! < b[0]! ? -1 : 1)),
    );

    const check = await createOrm(database.config, { entities, role: 'owner', poolMax: 1 });
    try {
      expect(await schemaStatus(check)).toEqual({ pending: [], drift: '' });
      await check.migrator.down({ to: PREVIOUS });
      expect(await admin(`select count(*)::int as n from pg_trigger where tgname = 'four_eyes'`)).toEqual([{ n: 0 }]);
      expect(await admin(`select count(*)::int as n from pg_proc where proname = 'approval_policy_changes_four_eyes_fn'`)).toEqual([{ n: 0 }]);
      await check.migrator.up();
      expect(await admin(`select tgrelid::regclass::text as t from pg_trigger where tgname = 'four_eyes'`)).toEqual([{ t: 'approval_policy_changes' }]);
      expect(await schemaStatus(check)).toEqual({ pending: [], drift: '' });
    } finally {
      await check.close(true);
    }
  });
});
