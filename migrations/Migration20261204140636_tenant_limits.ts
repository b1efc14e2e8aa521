import { Migration } from '@mikro-orm/migrations';

export class Migration20261204140636_tenant_limits extends Migration {

  override name = 'Migration20261204140636_tenant_limits';

  override up(): void | Promise<void> {
    this.addSql(`create table "tenant_limits" ("tenant_id" uuid not null, "max_active_runs" int null, "max_runs_in_flight" int null, "updated_by" varchar(255) not null, "updated_at" timestamptz not null, primary key ("tenant_id"));`);

    this.addSql(`alter table "tenant_limits" enable row level security;`);
    this.addSql(`alter table "tenant_limits" force row level security;`);
    this.addSql(`create policy "tenant_limits_tenant_isolation" on "tenant_limits" using ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif"))) with check ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif")));`);
    this.addSql(`create policy "tenant_limits_system_read" on "tenant_limits" for select to "dealix_system" using (true);`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop table if exists "tenant_limits" cascade;`);
  }

}
