import { Migration } from '@mikro-orm/migrations';

/**
 * The partner offboarding workflow's table (src/modules/partner-offboarding): one row per run,
 * tenant-owned, row-level security enabled and forced with the tenant isolation policy.
 */
export class Migration20261203165732_partner_offboardings extends Migration {

  override name = 'Migration20261203165732_partner_offboardings';

  override up(): void | Promise<void> {
    this.addSql(`create table "partner_offboardings" ("id" uuid not null, "tenant_id" uuid not null, "run_id" uuid not null, "partner_reference" varchar(100) not null, "partner_name" varchar(200) not null, "reason" text not null, "status" text not null, "settlement" jsonb null, "frozen_at" timestamptz not null, "settled_at" timestamptz null, "archived_at" timestamptz null, primary key ("id"));`);
    this.addSql(`alter table "partner_offboardings" add constraint "partner_offboardings_tenant_run_unique" unique ("tenant_id", "run_id");`);

    this.addSql(`alter table "partner_offboardings" add constraint "partner_offboardings_reason_check" check ("reason" in ('contract_ended', 'compliance', 'inactive', 'partner_request'));`);
    this.addSql(`alter table "partner_offboardings" add constraint "partner_offboardings_status_check" check ("status" in ('frozen', 'settled', 'archived'));`);
    this.addSql(`alter table "partner_offboardings" enable row level security;`);
    this.addSql(`alter table "partner_offboardings" force row level security;`);
    this.addSql(`create policy "partner_offboardings_tenant_isolation" on "partner_offboardings" using ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif"))) with check ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif")));`);

  }

  override down(): void | Promise<void> {
    this.addSql(`drop table if exists "partner_offboardings" cascade;`);
  }

}
