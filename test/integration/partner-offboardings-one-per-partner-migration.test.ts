/**
 * Migration partner_offboardings_one_per_partner on a database that has history: a partner offboarded
 * twice by a tenant before it keeps its first archived record (else its first) and the other reads `abandoned` (its
 * settlement and timestamps kept), other tenants' records of the same reference and other partners'
 * are untouched, row-level security is still forced, a second live record of a partner is refused
 * from then on, and the schema matches the entities with nothing pending. Down and up again too.
 */
import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createOrm } from '../../src/platform/db/orm.ts';
import { migrate, schemaStatus } from '../../src/platform/db/migrate.ts';
import { entities } from '../../src/entities.ts';
import { migrateUpTo, migrationTestDatabase } from '../helpers/migrations.ts';

const PREVIOUS = 'Migration20261204213325_run_retention_decision';
const THIS = 'Migration20261205002019_partner_offboardings_one_per_partner';

const database = migrationTestDatabase();
const admin = database.admin;

/** An archived offboarding as the release before this one stored it, frozen `hoursAgo` (superuser: no RLS in the way). */
async function archived(tenant: string, reference: string, hoursAgo: number): Promise<string> {
  const id = randomUUID();
  await admin(
    `insert into partner_offboardings (id, tenant_id, run_id, partner_reference, partner_name, reason, status, settlement, frozen_at, settled_at, archived_at)
     values ($1, $2, $3, $4, 'Acme', 'inactive', 'archived', '{"lines": []}', now() - make_interval(hours => $5), now() - make_interval(hours => $5), now() - make_interval(hours => $5))`,
    [id, tenant, randomUUID(), reference, hoursAgo],
  );
  return id;
}

/** An offboarding its run never archived (cancelled or failed at settle-balances), frozen `hoursAgo`. */
async function frozen(tenant: string, reference: string, hoursAgo: number): Promise<string> {
  const id = randomUUID();
  await admin(
    `insert into partner_offboardings (id, tenant_id, run_id, partner_reference, partner_name, reason, status, frozen_at)
     values ($1, $2, $3, $4, 'Acme', 'inactive', 'frozen', now() - make_interval(hours => $5))`,
    [id, tenant, randomUUID(), reference, hoursAgo],
  );
  return id;
}

const records = async () => Object.fromEntries((await admin(`select id, status, settlement, archived_at from partner_offboardings`)).map((r) => [r.id as string, r]));

describe('migration partner_offboardings_one_per_partner', () => {
  it("abandons every tenant's later offboardings of a partner offboarded twice, changes nothing else, keeps RLS forced, refuses a second live record, and leaves db:check clean; down and up again", async () => {
    const pending = await migrateUpTo(database.config, PREVIOUS);
    expect(pending[0]).toBe(THIS);
    const [t1, t2] = [randomUUID(), randomUUID()];
    const first = await archived(t1, 'P-A', 3);
    const twice = await archived(t1, 'P-A', 2);
    const thrice = await archived(t1, 'P-A', 1);
    const untouched = [first, await archived(t1, 'P-B', 1), await archived(t2, 'P-A', 1)];
    // Offboarded (archived) after an offboarding that never archived (cancelled, then submitted again):
    // the archived one is the partner's, whatever came first — keeping the other would let the next
    // offboarding take its place (a cancelled run's) or its retry (a failed run's) settle the partner again.
    const unfinished = await frozen(t2, 'P-C', 3);
    const done = await archived(t2, 'P-C', 2);
    untouched.push(done);
    const before = await records();

    expect(await migrate(database.config, entities)).toEqual(pending);
    const after = await records();
    for (const id of [twice, thrice, unfinished]) expect(after[id]).toEqual({ ...before[id], status: 'abandoned' });
    for (const id of untouched) expect(after[id]).toEqual(before[id]);
    expect(await admin(`select relforcerowsecurity from pg_class where relname = 'partner_offboardings'`)).toEqual([{ relforcerowsecurity: true }]);
    await expect(archived(t1, 'P-B', 0)).rejects.toThrow(/partner_offboardings_tenant_partner_unique/);

    const check = await createOrm(database.config, { entities, role: 'owner', poolMax: 1 });
    try {
      expect(await schemaStatus(check)).toEqual({ pending: [], drift: '' });
      // Down: the old code knows no `abandoned`, so those records read as far as they got; up abandons them again.
      await check.migrator.down({ to: PREVIOUS });
      const down = await records();
      for (const id of [twice, thrice, unfinished]) expect(down[id]).toEqual(before[id]);
      await check.migrator.up();
      const again = await records();
      for (const id of [twice, thrice, unfinished]) expect(again[id]!.status).toBe('abandoned');
      for (const id of untouched) expect(again[id]).toEqual(before[id]);
      expect(await schemaStatus(check)).toEqual({ pending: [], drift: '' });
    } finally {
      await check.close(true);
    }
  });
});
