import { Migration } from '@mikro-orm/migrations';

/**
 * The history of approval policy versions takes only the tenant's policy as the writing transaction
 * commits it (ADR 0010, amendment "every policy version is kept"; POLICY_VERSION_GUARD in
 * approval.entities.ts): `is_the_policy` on `approval_policy_versions` refuses (42501) a row that is not
 * the tenant's `approval_policies` row, its version and every recorded column. `record_version` writes
 * its rows as the application role (it runs as the writer), so that role may insert into the history;
 * without the guard it could insert a version of its own making that a forged evidence pack then names.
 *
 * A constraint trigger deferred to the commit, like `record_version` (whose copy, made at the commit,
 * fires it there in turn): the schema generator compares its timing, events and body with the entity's
 * declaration, not that it is a deferred constraint trigger — keep `constraint … deferrable initially
 * deferred` if it is ever created again. Rows already in the history are not checked (the versions
 * replaced since differ from the policy row by design). Down drops the trigger and its function.
 */
export class Migration20261206033806_approval_policy_version_guard extends Migration {

  override name = 'Migration20261206033806_approval_policy_version_guard';

  override up(): void | Promise<void> {
    this.addSql(`create or replace function "approval_policy_versions_is_the_policy_fn"() returns trigger as \$\$ begin if not exists (select from approval_policies p where p.tenant_id = new.tenant_id and (p.tenant_id, p.version, p.class_amax_cost, p.class_amax_payback_months, p.class_cmin_cost, p.class_cmin_payback_months, p.sla_bseconds, p.sla_cseconds, p.currency, p.updated_at, p.updated_by, p.approved_by) is not distinct from (new.tenant_id, new.version, new.class_amax_cost, new.class_amax_payback_months, new.class_cmin_cost, new.class_cmin_payback_months, new.sla_bseconds, new.sla_cseconds, new.currency, new.updated_at, new.updated_by, new.approved_by)) then raise exception 'approval policy version % of tenant % is not the tenant''s policy as this transaction commits it', new.version, new.tenant_id using errcode = 'insufficient_privilege'; end if; return null; end; \$\$ language plpgsql;`);
    this.addSql(`create constraint trigger "is_the_policy" AFTER INSERT on "approval_policy_versions" deferrable initially deferred for each ROW execute function "approval_policy_versions_is_the_policy_fn"();`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop trigger if exists "is_the_policy" on "approval_policy_versions";`);
    this.addSql(`drop function if exists "approval_policy_versions_is_the_policy_fn"();`);
  }

}
