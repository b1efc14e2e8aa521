import { Migration } from '@mikro-orm/migrations';

/**
 * One offboarding per partner: at most one record of a tenant's `partner_reference` is not `abandoned`
 * (a partial unique index), and the status `abandoned` — a record whose run was cancelled (or deleted by
 * run retention) before it was archived, given up by the next offboarding of its partner.
 *
 * A partner offboarded more than once before this release keeps its first archived record (by
 * `frozen_at`, then id), or its first record when none archived; the others are marked `abandoned`, their
 * settlement and timestamps kept (`archived_at` not null: it was archived, a duplicate settlement to look
 * at — docs/api.md). Archived first: a partner cancelled, then offboarded again, keeping its cancelled
 * record would be taken over by its next offboarding (and a failed run's, retried), settled once more. partner_offboardings forces row-level
 * security on the owner too, and the tenant setting is unset in a migration: the fix lifts it for this
 * table alone, under the ACCESS EXCLUSIVE lock the constraint change takes anyway, and forces it again
 * before the migration commits.
 *
 * Same workflow version (ADR 0008: step 1's body changed, not its name or schemas). While a worker of
 * the previous release still runs, its step 1 inserting a second live record of a partner meets this
 * index as a unique violation, which its executor takes for a lost checkpoint race: the run is not
 * failed but retried (then swept) until a worker of this release runs it and fails it
 * `partner_already_offboarded`.
 */
export class Migration20261205002019_partner_offboardings_one_per_partner extends Migration {

  override name = 'Migration20261205002019_partner_offboardings_one_per_partner';

  override up(): void | Promise<void> {
    this.addSql(`alter table "partner_offboardings" drop constraint "partner_offboardings_status_check";`);
    this.addSql(`alter table "partner_offboardings" add constraint "partner_offboardings_status_check" check ("status" in ('frozen', 'settled', 'archived', 'abandoned'));`);
    this.addSql(`alter table "partner_offboardings" no force row level security;`);
    this.addSql(`update partner_offboardings o set status = 'abandoned'
  from (select id, row_number() over (partition by tenant_id, partner_reference order by status = 'archived' desc, frozen_at, id) as n
          from partner_offboardings) k
  where k.id = o.id and k.n > 1;`);
    this.addSql(`alter table "partner_offboardings" force row level security;`);
    this.addSql(`create unique index "partner_offboardings_tenant_partner_unique" on "partner_offboardings" ("tenant_id", "partner_reference") where status <> 'abandoned';`);
  }

  override down(): void | Promise<void> {
    // The old code knows no `abandoned`: such a record reads as far as it got (its runs stay as they ended).
    this.addSql(`drop index "partner_offboardings_tenant_partner_unique";`);
    this.addSql(`alter table "partner_offboardings" no force row level security;`);
    this.addSql(`update partner_offboardings set status = case when archived_at is not null then 'archived' when settled_at is not null then 'settled' else 'frozen' end where status = 'abandoned';`);
    this.addSql(`alter table "partner_offboardings" force row level security;`);
    this.addSql(`alter table "partner_offboardings" drop constraint "partner_offboardings_status_check";`);
    this.addSql(`alter table "partner_offboardings" add constraint "partner_offboardings_status_check" check ("status" in ('frozen', 'settled', 'archived'));`);
  }

}
