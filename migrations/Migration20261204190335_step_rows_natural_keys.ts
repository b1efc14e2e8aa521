import { Migration } from '@mikro-orm/migrations';

/**
 * Each table, the unique constraint its primary key replaces, and the key's columns — in the order a step
 * takes them, since each lock is held until the migrations commit: a new run's first step inserts its
 * dossier before its checkpoint, every other step reads its run's checkpoints before inserting its rows.
 * A migration that took `approval_decisions` first deadlocked with an approval step that had read its
 * checkpoints (step-rows-natural-keys-migration.test.ts). A decision reads its run's checkpoints before
 * its request's decisions for the same reason (it read them the other way round and could deadlock with it).
 */
const KEYS: [table: string, unique: string, columns: string[]][] = [
  ['partner_dossiers', 'partner_dossiers_tenant_run_unique', ['tenant_id', 'run_id']],
  ['durable_checkpoints', 'durable_checkpoints_tenant_run_seq_unique', ['tenant_id', 'run_id', 'sequence_num']],
  ['economics_models', 'economics_models_tenant_run_unique', ['tenant_id', 'run_id']],
  ['evidence_seals', 'evidence_seals_tenant_run_unique', ['tenant_id', 'run_id']],
  ['approval_decisions', 'approval_decisions_tenant_request_approver_unique', ['tenant_id', 'approval_request_id', 'approver']],
];

/**
 * `add primary key`, which builds the index under the table's ACCESS EXCLUSIVE lock (until the migrations
 * commit) — or, where `<table>_natural_key` was built beforehand by hand (`create unique index concurrently`,
 * docs/runbook.md), that index made the primary key: no read of the table. A prebuilt index that is not
 * valid, or not exactly the key, stops the migration (nothing changed) rather than key the table by it.
 */
function addPrimaryKey(table: string, columns: string[]): string {
  const prebuilt = `${table}_natural_key`;
  const def = `CREATE UNIQUE INDEX ${prebuilt} ON public.${table} USING btree (${columns.join(', ')})`;
  return `do $$ begin
    if to_regclass('public.${prebuilt}') is null then
      alter table "${table}" add primary key (${columns.map((c) => `"${c}"`).join(', ')});
    elsif (select indisvalid from pg_index where indexrelid = 'public.${prebuilt}'::regclass) and pg_get_indexdef('public.${prebuilt}'::regclass) = '${def}' then
      alter table "${table}" add constraint "${table}_pkey" primary key using index "${prebuilt}";
    else
      raise exception 'index ${prebuilt} is not valid or not %: drop it and build it again (docs/runbook.md)', '${def}';
    end if;
  end $$;`;
}

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
 * index` refuses an index that belongs to a constraint). A large installation builds the indexes first
 * by hand, concurrently, as `<table>_natural_key`: the migration then makes each the primary key without
 * reading the table (docs/runbook.md, `step_rows_natural_keys`).
 */
export class Migration20261204190335_step_rows_natural_keys extends Migration {

  override name = 'Migration20261204190335_step_rows_natural_keys';

  override up(): void | Promise<void> {
    for (const [table, unique, columns] of KEYS) {
      this.addSql(`alter table "${table}" drop constraint "${unique}";`);
      this.addSql(`alter table "${table}" drop constraint "${table}_pkey";`);
      this.addSql(addPrimaryKey(table, columns));
    }
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
