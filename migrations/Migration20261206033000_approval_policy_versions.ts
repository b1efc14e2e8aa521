import { Migration } from '@mikro-orm/migrations';

/**
 * The history of each tenant's approval policy versions (ADR 0010, amendment "every policy version is
 * kept"): `approval_policy_versions`, one row per (tenant, version), tenant-owned, row-level security
 * enabled and forced with the tenant isolation policy; and `approval_requests.policy_version`, the
 * version the approval step classified by (null for the requests already there: not recorded).
 *
 * Backfill: each tenant's policy in force becomes its first history row (earlier versions were replaced
 * in place and are gone). `approval_policies` forces row-level security on its owner too, and no tenant
 * is set in a migration, so the owner would read no row: the force is lifted for the one statement that
 * copies the rows and put back in the same transaction (nobody else sees the table without it). The
 * history table is filled before its own row-level security is enabled.
 *
 * From then on the history is written by triggers, not by the application, so a version applied by
 * code that knows nothing of it (an old web process while this release rolls out, a rollback) is
 * recorded too: `record_version` on `approval_policies`, a constraint trigger deferred to the commit,
 * copies the row as the transaction leaves it whenever an insert or update changed its version; and
 * application role may insert history rows: without it, a version never in force). Both run as the
 * writing role. Created after the backfill, in the same transaction under the ALTER's lock: no version
 * is applied between the copy and the trigger. The schema generator compares the trigger's timing,
 * events and body with the entity's declaration (approval.entities.ts), not that it is a deferred
 * constraint trigger: keep `constraint … deferrable initially deferred` if it is ever created again.
 *
 * `approval_policies` is locked (by its ALTER) before `approval_requests` (by its ADD COLUMN): the order
 * of an approval step, which reads the policy and then inserts the request, so a step in flight waits
 * for the migration instead of deadlocking with it. Down drops the trigger, the table and the column
 * (what they recorded is not restored by up: the history starts again from the versions then in force).
 */
export class Migration20261206033000_approval_policy_versions extends Migration {

  override name = 'Migration20261206033000_approval_policy_versions';

  override up(): void | Promise<void> {
    this.addSql(`create table "approval_policy_versions" ("id" uuid not null, "tenant_id" uuid not null, "version" int not null, "class_amax_cost" double precision not null, "class_amax_payback_months" double precision not null, "class_cmin_cost" double precision not null, "class_cmin_payback_months" double precision not null, "sla_bseconds" int not null, "sla_cseconds" int not null, "currency" varchar(3) not null, "updated_at" timestamptz not null, "updated_by" varchar(255) null, "approved_by" varchar(255) null, primary key ("tenant_id", "version"));`);

    this.addSql(`alter table "approval_policies" no force row level security;`);
    this.addSql(`insert into "approval_policy_versions" (id, tenant_id, version, class_amax_cost, class_amax_payback_months, class_cmin_cost, class_cmin_payback_months, sla_bseconds, sla_cseconds, currency, updated_at, updated_by, approved_by)
      select gen_random_uuid(), tenant_id, version, class_amax_cost, class_amax_payback_months, class_cmin_cost, class_cmin_payback_months, sla_bseconds, sla_cseconds, currency, updated_at, updated_by, approved_by
        from "approval_policies";`);
    this.addSql(`alter table "approval_policies" force row level security;`);

    this.addSql(`create or replace function "approval_policies_record_version_fn"() returns trigger as \$\$ begin if tg_op = 'UPDATE' and new.version = old.version then return null; end if; insert into approval_policy_versions (id, tenant_id, version, class_amax_cost, class_amax_payback_months, class_cmin_cost, class_cmin_payback_months, sla_bseconds, sla_cseconds, currency, updated_at, updated_by, approved_by) select gen_random_uuid(), tenant_id, version, class_amax_cost, class_amax_payback_months, class_cmin_cost, class_cmin_payback_months, sla_bseconds, sla_cseconds, currency, updated_at, updated_by, approved_by from approval_policies where tenant_id = new.tenant_id on conflict (tenant_id, version) do nothing; return null; end; \$\$ language plpgsql;`);
    this.addSql(`create constraint trigger "record_version" AFTER INSERT OR UPDATE on "approval_policies" deferrable initially deferred for each ROW execute function "approval_policies_record_version_fn"();`);

    this.addSql(`alter table "approval_requests" add "policy_version" int null;`);

    this.addSql(`alter table "approval_policy_versions" enable row level security;`);
    this.addSql(`alter table "approval_policy_versions" force row level security;`);
    this.addSql(`create policy "approval_policy_versions_tenant_isolation" on "approval_policy_versions" using ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif"))) with check ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif")));`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop trigger if exists "record_version" on "approval_policies";`);
    this.addSql(`drop function if exists "approval_policies_record_version_fn"();`);
    this.addSql(`drop table if exists "approval_policy_versions" cascade;`);

    this.addSql(`alter table "approval_requests" drop column "policy_version";`);
  }

}
