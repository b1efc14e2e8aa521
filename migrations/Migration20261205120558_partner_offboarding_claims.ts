import { Migration } from '@mikro-orm/migrations';

/**
 * Partner offboarding's submission claims (src/modules/partner-offboarding): one row per (tenant,
 * partner reference), naming the run a submission accepted for the partner, taken in the submission's
 * transaction so a second submission of the partner is refused before the first run reaches
 * freeze-partner (docs/api.md, *One offboarding per partner*). Tenant-owned, row-level security enabled
 * and forced with the tenant isolation policy. A new, empty table: nothing is locked but it, and no
 * claim is written for runs already submitted (their records, and freeze-partner, decide as before).
 */
export class Migration20261205120558_partner_offboarding_claims extends Migration {

  override name = 'Migration20261205120558_partner_offboarding_claims';

  override up(): void | Promise<void> {
    this.addSql(`create table "partner_offboarding_claims" ("tenant_id" uuid not null, "partner_reference" varchar(100) not null, "id" uuid not null, "run_id" uuid not null, "claimed_at" timestamptz not null, primary key ("tenant_id", "partner_reference"));`);

    this.addSql(`alter table "partner_offboarding_claims" enable row level security;`);
    this.addSql(`alter table "partner_offboarding_claims" force row level security;`);
    this.addSql(`create policy "partner_offboarding_claims_tenant_isolation" on "partner_offboarding_claims" using ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif"))) with check ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif")));`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop table if exists "partner_offboarding_claims" cascade;`);
  }

}
