import { Migration } from '@mikro-orm/migrations';

/**
 * The rows a golden-path step writes once per run (or, for checkpoints, once per run and step) are keyed
 * by what every statement finds them by: the checkpoints by (tenant_id, run_id, sequence_num), the
 * dossier, economics model and evidence seal by (tenant_id, run_id), an approval decision by (tenant_id,
 * approval_request_id, approver). Each table had a primary key on a random `id` that no statement looks
 * a row up by, beside a unique key on those columns: two B-tree inserts per row where one keeps the same
 * guarantees (a second checkpoint of a step, a second row of a run, a second decision of an approver is
 * still a unique violation; each `on conflict` names its columns and infers the primary key). Eight index
 * inserts less per class A run (docs/performance.md, session 24). The `id` columns stay, not null and
 * written as before, with no index of their own.
 *
 * The primary keys are built in the migration's transaction (a scan of each table under its lock): the
 * unique constraints they replace own their indexes and cannot hand them over (`add primary key using
 * index` refuses an index that belongs to a constraint).
 */
export class Migration20261204190335_step_rows_natural_keys extends Migration {

  override name = 'Migration20261204190335_step_rows_natural_keys';

  override up(): void | Promise<void> {
    this.addSql(`alter table "approval_decisions" drop constraint "approval_decisions_tenant_request_approver_unique";`);
    this.addSql(`alter table "approval_decisions" drop constraint "approval_decisions_pkey";`);
    this.addSql(`alter table "approval_decisions" add primary key ("tenant_id", "approval_request_id", "approver");`);

    this.addSql(`alter table "durable_checkpoints" drop constraint "durable_checkpoints_tenant_run_seq_unique";`);
    this.addSql(`alter table "durable_checkpoints" drop constraint "durable_checkpoints_pkey";`);
    this.addSql(`alter table "durable_checkpoints" add primary key ("tenant_id", "run_id", "sequence_num");`);

    this.addSql(`alter table "economics_models" drop constraint "economics_models_tenant_run_unique";`);
    this.addSql(`alter table "economics_models" drop constraint "economics_models_pkey";`);
    this.addSql(`alter table "economics_models" add primary key ("tenant_id", "run_id");`);

    this.addSql(`alter table "evidence_seals" drop constraint "evidence_seals_tenant_run_unique";`);
    this.addSql(`alter table "evidence_seals" drop constraint "evidence_seals_pkey";`);
    this.addSql(`alter table "evidence_seals" add primary key ("tenant_id", "run_id");`);

    this.addSql(`alter table "partner_dossiers" drop constraint "partner_dossiers_tenant_run_unique";`);
    this.addSql(`alter table "partner_dossiers" drop constraint "partner_dossiers_pkey";`);
    this.addSql(`alter table "partner_dossiers" add primary key ("tenant_id", "run_id");`);
  }

  override down(): void | Promise<void> {
    this.addSql(`alter table "approval_decisions" drop constraint "approval_decisions_pkey";`);
    this.addSql(`alter table "approval_decisions" add constraint "approval_decisions_tenant_request_approver_unique" unique ("tenant_id", "approval_request_id", "approver");`);
    this.addSql(`alter table "approval_decisions" add primary key ("id");`);

    this.addSql(`alter table "durable_checkpoints" drop constraint "durable_checkpoints_pkey";`);
    this.addSql(`alter table "durable_checkpoints" add constraint "durable_checkpoints_tenant_run_seq_unique" unique ("tenant_id", "run_id", "sequence_num");`);
    this.addSql(`alter table "durable_checkpoints" add primary key ("id");`);

    this.addSql(`alter table "economics_models" drop constraint "economics_models_pkey";`);
    this.addSql(`alter table "economics_models" add constraint "economics_models_tenant_run_unique" unique ("tenant_id", "run_id");`);
    this.addSql(`alter table "economics_models" add primary key ("id");`);

    this.addSql(`alter table "evidence_seals" drop constraint "evidence_seals_pkey";`);
    this.addSql(`alter table "evidence_seals" add constraint "evidence_seals_tenant_run_unique" unique ("tenant_id", "run_id");`);
    this.addSql(`alter table "evidence_seals" add primary key ("id");`);

    this.addSql(`alter table "partner_dossiers" drop constraint "partner_dossiers_pkey";`);
    this.addSql(`alter table "partner_dossiers" add constraint "partner_dossiers_tenant_run_unique" unique ("tenant_id", "run_id");`);
    this.addSql(`alter table "partner_dossiers" add primary key ("id");`);
  }

}
