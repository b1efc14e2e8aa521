import { Migration } from '@mikro-orm/migrations';

export class Migration20261124000457_initial extends Migration {

  override name = 'Migration20261124000457_initial';

  override up(): void | Promise<void> {
    // The narrow system role the policies name (ADR 0003). db:setup creates it in development; in production
    // it is created beforehand by an administrator, since the owner role has no CREATEROLE.
    this.addSql(`do $$ begin if not exists (select from pg_roles where rolname = 'dealix_system') then create role dealix_system nologin nobypassrls; end if; end $$;`);
    this.addSql(`create table "approval_decisions" ("id" uuid not null, "tenant_id" uuid not null, "approval_request_id" uuid not null, "approver" varchar(255) not null, "decision" text not null, "kind" text not null, "comment" varchar(2000) null, "created_at" timestamptz not null, primary key ("id"));`);
    this.addSql(`create index "approval_decisions_tenant_id_index" on "approval_decisions" ("tenant_id");`);
    this.addSql(`alter table "approval_decisions" add constraint "approval_decisions_tenant_request_approver_unique" unique ("tenant_id", "approval_request_id", "approver");`);

    this.addSql(`create table "approval_policies" ("id" uuid not null, "tenant_id" uuid not null, "class_amax_cost" double precision not null, "class_amax_payback_months" double precision not null, "class_cmin_cost" double precision not null, "class_cmin_payback_months" double precision not null, "sla_bseconds" int not null, "sla_cseconds" int not null, "updated_at" timestamptz not null, primary key ("id"));`);
    this.addSql(`create index "approval_policies_tenant_id_index" on "approval_policies" ("tenant_id");`);
    this.addSql(`alter table "approval_policies" add constraint "approval_policies_tenant_unique" unique ("tenant_id");`);

    this.addSql(`create table "approval_requests" ("id" uuid not null, "tenant_id" uuid not null, "run_id" uuid not null, "approval_class" varchar(1) not null, "required_approvals" int not null, "status" text not null, "submitted_by" varchar(255) not null, "reasons" jsonb not null, "sla_deadline" timestamptz null, "decided_at" timestamptz null, "created_at" timestamptz not null, "updated_at" timestamptz not null, primary key ("id"));`);
    this.addSql(`create index "approval_requests_tenant_id_index" on "approval_requests" ("tenant_id");`);
    this.addSql(`create index "approval_requests_tenant_status_index" on "approval_requests" ("tenant_id", "status", "created_at");`);
    this.addSql(`alter table "approval_requests" add constraint "approval_requests_tenant_run_unique" unique ("tenant_id", "run_id");`);

    this.addSql(`create table "durable_runs" ("id" uuid not null, "tenant_id" uuid not null, "workflow" varchar(100) not null, "workflow_version" int not null, "idempotency_hash" varchar(64) not null, "status" text not null, "principal" varchar(255) not null, "input" jsonb not null, "output" jsonb null, "error" jsonb null, "correlation_id" varchar(128) not null, "trace_id" varchar(32) null, "traceparent" varchar(64) null, "sequence_num" int not null default 0, "step_count" int not null, "lease_owner" varchar(128) null, "lease_expires_at" timestamptz null, "created_at" timestamptz not null, "updated_at" timestamptz not null, "completed_at" timestamptz null, primary key ("id"));`);
    this.addSql(`create index "durable_runs_tenant_id_index" on "durable_runs" ("tenant_id");`);
    this.addSql(`create index "durable_runs_tenant_created_index" on "durable_runs" ("tenant_id", "created_at", "id");`);
    this.addSql(`create index "durable_runs_tenant_status_index" on "durable_runs" ("tenant_id", "status");`);
    this.addSql(`create index "durable_runs_status_updated_index" on "durable_runs" ("status", "updated_at");`);
    this.addSql(`alter table "durable_runs" add constraint "durable_runs_tenant_hash_unique" unique ("tenant_id", "idempotency_hash");`);

    this.addSql(`create table "durable_checkpoints" ("id" uuid not null, "tenant_id" uuid not null, "run_id" uuid not null, "sequence_num" int not null, "step_name" varchar(100) not null, "status" text not null, "output" jsonb null, "error" jsonb null, "attempt" int not null default 1, "created_at" timestamptz not null, "updated_at" timestamptz not null, "completed_at" timestamptz null, primary key ("id"));`);
    this.addSql(`create index "durable_checkpoints_tenant_id_index" on "durable_checkpoints" ("tenant_id");`);
    this.addSql(`alter table "durable_checkpoints" add constraint "durable_checkpoints_tenant_run_seq_unique" unique ("tenant_id", "run_id", "sequence_num");`);

    this.addSql(`create table "economics_models" ("id" uuid not null, "tenant_id" uuid not null, "run_id" uuid not null, "currency" varchar(3) not null, "cost" double precision not null, "payback_months" double precision null, "content" jsonb not null, "created_at" timestamptz not null, primary key ("id"));`);
    this.addSql(`create index "economics_models_tenant_id_index" on "economics_models" ("tenant_id");`);
    this.addSql(`alter table "economics_models" add constraint "economics_models_tenant_run_unique" unique ("tenant_id", "run_id");`);

    this.addSql(`create table "evidence_packs" ("id" uuid not null, "tenant_id" uuid not null, "run_id" uuid not null, "content" jsonb not null, "sha256" varchar(64) not null, "created_at" timestamptz not null, primary key ("id"));`);
    this.addSql(`create index "evidence_packs_tenant_id_index" on "evidence_packs" ("tenant_id");`);
    this.addSql(`alter table "evidence_packs" add constraint "evidence_packs_tenant_run_unique" unique ("tenant_id", "run_id");`);

    this.addSql(`create table "idempotency_keys" ("id" uuid not null, "tenant_id" uuid not null, "principal" varchar(255) not null, "idempotency_key" varchar(255) not null, "method" varchar(10) not null, "route" varchar(255) not null, "fingerprint" varchar(64) not null, "status" text not null, "response_status" int null, "response_body" jsonb null, "response_headers" jsonb null, "locked_at" timestamptz null, "created_at" timestamptz not null, "expires_at" timestamptz not null, primary key ("id"));`);
    this.addSql(`create index "idempotency_keys_tenant_id_index" on "idempotency_keys" ("tenant_id");`);
    this.addSql(`create index "idempotency_keys_expires_at_index" on "idempotency_keys" ("expires_at");`);
    this.addSql(`alter table "idempotency_keys" add constraint "idempotency_keys_tenant_principal_key_unique" unique ("tenant_id", "principal", "idempotency_key");`);

    this.addSql(`create table "partner_dossiers" ("id" uuid not null, "tenant_id" uuid not null, "run_id" uuid not null, "partner_name" varchar(200) not null, "country" varchar(2) not null, "completeness_score" double precision not null, "content" jsonb not null, "created_at" timestamptz not null, primary key ("id"));`);
    this.addSql(`create index "partner_dossiers_tenant_id_index" on "partner_dossiers" ("tenant_id");`);
    this.addSql(`alter table "partner_dossiers" add constraint "partner_dossiers_tenant_run_unique" unique ("tenant_id", "run_id");`);

    this.addSql(`alter table "approval_decisions" add constraint "approval_decisions_decision_check" check ("decision" in ('approve', 'reject'));`);
    this.addSql(`alter table "approval_decisions" add constraint "approval_decisions_kind_check" check ("kind" in ('human', 'system'));`);
    this.addSql(`alter table "approval_decisions" enable row level security;`);
    this.addSql(`alter table "approval_decisions" force row level security;`);
    this.addSql(`create policy "approval_decisions_tenant_isolation" on "approval_decisions" using ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif"))) with check ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif")));`);

    this.addSql(`alter table "approval_policies" enable row level security;`);
    this.addSql(`alter table "approval_policies" force row level security;`);
    this.addSql(`create policy "approval_policies_tenant_isolation" on "approval_policies" using ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif"))) with check ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif")));`);

    this.addSql(`alter table "approval_requests" add constraint "approval_requests_status_check" check ("status" in ('pending', 'approved', 'rejected', 'expired'));`);
    this.addSql(`alter table "approval_requests" enable row level security;`);
    this.addSql(`alter table "approval_requests" force row level security;`);
    this.addSql(`create policy "approval_requests_tenant_isolation" on "approval_requests" using ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif"))) with check ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif")));`);

    this.addSql(`alter table "durable_runs" add constraint "durable_runs_status_check" check ("status" in ('pending', 'running', 'waiting', 'completed', 'failed', 'rejected', 'approval_expired', 'cancelled'));`);
    this.addSql(`alter table "durable_runs" enable row level security;`);
    this.addSql(`alter table "durable_runs" force row level security;`);
    this.addSql(`create policy "durable_runs_tenant_isolation" on "durable_runs" using ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif"))) with check ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif")));`);
    this.addSql(`create policy "durable_runs_system_sweep" on "durable_runs" for select to "dealix_system" using (true);`);

    this.addSql(`alter table "durable_checkpoints" add constraint "durable_checkpoints_run_id_foreign" foreign key ("run_id") references "durable_runs" ("id") on delete cascade;`);
    this.addSql(`alter table "durable_checkpoints" add constraint "durable_checkpoints_status_check" check ("status" in ('started', 'completed', 'failed', 'waiting'));`);
    this.addSql(`alter table "durable_checkpoints" enable row level security;`);
    this.addSql(`alter table "durable_checkpoints" force row level security;`);
    this.addSql(`create policy "durable_checkpoints_tenant_isolation" on "durable_checkpoints" using ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif"))) with check ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif")));`);

    this.addSql(`alter table "economics_models" enable row level security;`);
    this.addSql(`alter table "economics_models" force row level security;`);
    this.addSql(`create policy "economics_models_tenant_isolation" on "economics_models" using ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif"))) with check ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif")));`);

    this.addSql(`alter table "evidence_packs" enable row level security;`);
    this.addSql(`alter table "evidence_packs" force row level security;`);
    this.addSql(`create policy "evidence_packs_tenant_isolation" on "evidence_packs" using ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif"))) with check ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif")));`);

    this.addSql(`alter table "idempotency_keys" add constraint "idempotency_keys_status_check" check ("status" in ('in_progress', 'completed'));`);
    this.addSql(`alter table "idempotency_keys" enable row level security;`);
    this.addSql(`alter table "idempotency_keys" force row level security;`);
    this.addSql(`create policy "idempotency_keys_tenant_isolation" on "idempotency_keys" using ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif"))) with check ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif")));`);
    this.addSql(`create policy "idempotency_keys_system_select_expired" on "idempotency_keys" for select to "dealix_system" using ((expires_at < now()));`);
    this.addSql(`create policy "idempotency_keys_system_delete_expired" on "idempotency_keys" for delete to "dealix_system" using ((expires_at < now()));`);

    this.addSql(`alter table "partner_dossiers" enable row level security;`);
    this.addSql(`alter table "partner_dossiers" force row level security;`);
    this.addSql(`create policy "partner_dossiers_tenant_isolation" on "partner_dossiers" using ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif"))) with check ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif")));`);
  }

  override down(): void | Promise<void> {
    this.addSql(`alter table "durable_checkpoints" drop constraint "durable_checkpoints_run_id_foreign";`);

    this.addSql(`drop table if exists "approval_decisions" cascade;`);
    this.addSql(`drop table if exists "approval_policies" cascade;`);
    this.addSql(`drop table if exists "approval_requests" cascade;`);
    this.addSql(`drop table if exists "durable_runs" cascade;`);
    this.addSql(`drop table if exists "durable_checkpoints" cascade;`);
    this.addSql(`drop table if exists "economics_models" cascade;`);
    this.addSql(`drop table if exists "evidence_packs" cascade;`);
    this.addSql(`drop table if exists "idempotency_keys" cascade;`);
    this.addSql(`drop table if exists "partner_dossiers" cascade;`);
  }

}
