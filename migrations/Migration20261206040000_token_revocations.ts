import { Migration } from '@mikro-orm/migrations';

export class Migration20261206040000_token_revocations extends Migration {

  override name = 'Migration20261206040000_token_revocations';

  override up(): void | Promise<void> {
    this.addSql(`create table "token_revocations" ("tenant_id" uuid not null, "id" uuid not null, "jti" varchar(255) null, "subject" varchar(255) null, "not_before" timestamptz null, "expires_at" timestamptz null, "revoked_by" varchar(255) not null, "reason" varchar(500) null, "created_at" timestamptz not null, primary key ("tenant_id", "id"));`);

    this.addSql(`alter table "token_revocations" add constraint "token_revocations_one_kind" check ((jti is null) <> (not_before is null));`);
    this.addSql(`alter table "token_revocations" add constraint "token_revocations_subject_with_not_before" check (subject is null or not_before is not null);`);
    this.addSql(`alter table "token_revocations" enable row level security;`);
    this.addSql(`alter table "token_revocations" force row level security;`);
    this.addSql(`create policy "token_revocations_tenant_isolation" on "token_revocations" using ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif"))) with check ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif")));`);
    this.addSql(`create policy "token_revocations_system_read" on "token_revocations" for select to "dealix_system" using (true);`);
    this.addSql(`create policy "token_revocations_system_prune" on "token_revocations" for delete to "dealix_system" using (expires_at < now());`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop table if exists "token_revocations" cascade;`);
  }

}
