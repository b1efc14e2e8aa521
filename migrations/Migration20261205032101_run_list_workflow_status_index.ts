import { Migration } from '@mikro-orm/migrations';

export class Migration20261205032101_run_list_workflow_status_index extends Migration {

  override name = 'Migration20261205032101_run_list_workflow_status_index';

  override up(): void | Promise<void> {
    // The new index first: the runs list is never left without one it can read in order.
    this.addSql(`create index if not exists "durable_runs_tenant_workflow_status_created_index" on "durable_runs" ("tenant_id", "workflow", "status", "created_at", "id");`);
    this.addSql(`drop index if exists "durable_runs_tenant_created_index";`);
  }

  override down(): void | Promise<void> {
    this.addSql(`create index if not exists "durable_runs_tenant_created_index" on "durable_runs" ("tenant_id", "created_at", "id");`);
    this.addSql(`drop index if exists "durable_runs_tenant_workflow_status_created_index";`);
  }

}
