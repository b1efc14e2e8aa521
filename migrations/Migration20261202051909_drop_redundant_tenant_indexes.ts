import { Migration } from '@mikro-orm/migrations';

export class Migration20261202051909_drop_redundant_tenant_indexes extends Migration {

  override name = 'Migration20261202051909_drop_redundant_tenant_indexes';

  /**
   * Every tenant-owned table has a composite index (unique constraint) that leads with tenant_id, so
   * the single-column tenant_id indexes only cost an index insert per row written. Dropping an index
   * takes a short ACCESS EXCLUSIVE lock on its table (docs/runbook.md, migrations and locks).
   */
  override up(): void | Promise<void> {
    this.addSql(`drop index "approval_decisions_tenant_id_index";`);

    this.addSql(`drop index "approval_policies_tenant_id_index";`);

    this.addSql(`drop index "approval_requests_tenant_id_index";`);

    this.addSql(`drop index "durable_runs_tenant_id_index";`);

    this.addSql(`drop index "durable_checkpoints_tenant_id_index";`);

    this.addSql(`drop index "economics_models_tenant_id_index";`);

    this.addSql(`drop index "evidence_packs_tenant_id_index";`);

    this.addSql(`drop index "idempotency_keys_tenant_id_index";`);

    this.addSql(`drop index "partner_dossiers_tenant_id_index";`);
  }

  override down(): void | Promise<void> {
    this.addSql(`create index "approval_decisions_tenant_id_index" on "approval_decisions" ("tenant_id");`);

    this.addSql(`create index "approval_policies_tenant_id_index" on "approval_policies" ("tenant_id");`);

    this.addSql(`create index "approval_requests_tenant_id_index" on "approval_requests" ("tenant_id");`);

    this.addSql(`create index "durable_checkpoints_tenant_id_index" on "durable_checkpoints" ("tenant_id");`);

    this.addSql(`create index "durable_runs_tenant_id_index" on "durable_runs" ("tenant_id");`);

    this.addSql(`create index "economics_models_tenant_id_index" on "economics_models" ("tenant_id");`);

    this.addSql(`create index "evidence_packs_tenant_id_index" on "evidence_packs" ("tenant_id");`);

    this.addSql(`create index "idempotency_keys_tenant_id_index" on "idempotency_keys" ("tenant_id");`);

    this.addSql(`create index "partner_dossiers_tenant_id_index" on "partner_dossiers" ("tenant_id");`);
  }

}
