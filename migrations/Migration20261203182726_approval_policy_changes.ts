import { Migration } from '@mikro-orm/migrations';

/**
 * Four-eyes on loosening the approval policy (ADR 0010): `approval_policy_changes` holds a proposed
 * change until a second admin of the tenant approves or rejects it (tenant-owned, row-level security
 * enabled and forced with the tenant isolation policy), and `approval_policies` gains the admin who
 * approved the change in force and a version a proposal is based on. Existing policies were set by
 * one admin, nobody confirmed them: `approved_by` null, version 1. A constant default and a nullable
 * column: the table is not rewritten, and its row-level security (forced) is untouched.
 */
export class Migration20261203182726_approval_policy_changes extends Migration {

  override name = 'Migration20261203182726_approval_policy_changes';

  override up(): void | Promise<void> {
    this.addSql(`create table "approval_policy_changes" ("id" uuid not null, "tenant_id" uuid not null, "policy" jsonb not null, "base_version" int not null, "loosens" jsonb not null, "status" text not null, "proposed_by" varchar(255) not null, "created_at" timestamptz not null, "expires_at" timestamptz not null, "decided_by" varchar(255) null, "decided_at" timestamptz null, primary key ("id"));`);
    this.addSql(`create index "approval_policy_changes_tenant_created_id_index" on "approval_policy_changes" ("tenant_id", "created_at", "id");`);

    this.addSql(`alter table "approval_policies" add "approved_by" varchar(255) null, add "version" int not null default 1;`);

    this.addSql(`alter table "approval_policy_changes" add constraint "approval_policy_changes_status_check" check ("status" in ('pending', 'approved', 'rejected', 'expired', 'superseded'));`);
    this.addSql(`alter table "approval_policy_changes" enable row level security;`);
    this.addSql(`alter table "approval_policy_changes" force row level security;`);
    this.addSql(`create policy "approval_policy_changes_tenant_isolation" on "approval_policy_changes" using ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif"))) with check ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif")));`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop table if exists "approval_policy_changes" cascade;`);

    this.addSql(`alter table "approval_policies" drop column "approved_by", drop column "version";`);
  }

}
