import { Migration } from '@mikro-orm/migrations';

export class Migration20261203215113_webhooks extends Migration {

  override name = 'Migration20261203215113_webhooks';

  override up(): void | Promise<void> {
    this.addSql(`create table "webhook_endpoints" ("id" uuid not null, "tenant_id" uuid not null, "url" varchar(2048) not null, "description" varchar(500) null, "events" text[] not null, "secret" varchar(100) not null, "enabled" boolean not null, "created_by" varchar(255) not null, "created_at" timestamptz not null, "updated_at" timestamptz not null, "disabled_at" timestamptz null, primary key ("id"));`);
    this.addSql(`create index "webhook_endpoints_tenant_created_index" on "webhook_endpoints" ("tenant_id", "created_at", "id");`);
    this.addSql(`alter table "webhook_endpoints" add constraint "webhook_endpoints_tenant_id_id_unique" unique ("tenant_id", "id");`);

    this.addSql(`create table "webhook_deliveries" ("id" uuid not null, "tenant_id" uuid not null, "endpoint_id" uuid not null, "event_type" varchar(64) not null, "payload" jsonb not null, "status" text not null, "attempts" int not null default 0, "next_attempt_at" timestamptz null, "last_attempt_at" timestamptz null, "last_status_code" int null, "last_error" varchar(500) null, "attempt_log" jsonb null, "delivered_at" timestamptz null, "created_at" timestamptz not null, "updated_at" timestamptz not null, primary key ("id"));`);
    this.addSql(`create index "webhook_deliveries_tenant_endpoint_created_index" on "webhook_deliveries" ("tenant_id", "endpoint_id", "created_at", "id");`);
    this.addSql(`create index "webhook_deliveries_pending_index" on "webhook_deliveries" ("next_attempt_at") where status = 'pending';`);
    this.addSql(`alter table "webhook_deliveries" add constraint "webhook_deliveries_tenant_id_id_unique" unique ("tenant_id", "id");`);

    this.addSql(`alter table "webhook_endpoints" enable row level security;`);
    this.addSql(`alter table "webhook_endpoints" force row level security;`);
    this.addSql(`create policy "webhook_endpoints_tenant_isolation" on "webhook_endpoints" using ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif"))) with check ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif")));`);

    this.addSql(`alter table "webhook_deliveries" add constraint "webhook_deliveries_tenant_id_endpoint_id_foreign" foreign key ("tenant_id", "endpoint_id") references "webhook_endpoints" ("tenant_id", "id") on delete cascade;`);
    this.addSql(`alter table "webhook_deliveries" add constraint "webhook_deliveries_status_check" check ("status" in ('pending', 'delivered', 'failed'));`);
    this.addSql(`alter table "webhook_deliveries" enable row level security;`);
    this.addSql(`alter table "webhook_deliveries" force row level security;`);
    this.addSql(`create policy "webhook_deliveries_tenant_isolation" on "webhook_deliveries" using ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif"))) with check ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif")));`);
    this.addSql(`create policy "webhook_deliveries_system_redelivery" on "webhook_deliveries" for select to "dealix_system" using (true);`);
  }

  override down(): void | Promise<void> {
    this.addSql(`alter table "webhook_deliveries" drop constraint "webhook_deliveries_tenant_id_endpoint_id_foreign";`);

    this.addSql(`drop table if exists "webhook_endpoints" cascade;`);
    this.addSql(`drop table if exists "webhook_deliveries" cascade;`);
  }

}
