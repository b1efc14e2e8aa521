import { Migration } from '@mikro-orm/migrations';

export class Migration20261203222911_bulk_cancel_active_runs_index extends Migration {

  override name = 'Migration20261203222911_bulk_cancel_active_runs_index';

  override up(): void | Promise<void> {
    this.addSql(`create index if not exists "durable_runs_tenant_workflow_active_index" on "durable_runs" ("tenant_id", "workflow", "created_at", "id") where status in ('pending', 'running', 'waiting');`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop index if exists "durable_runs_tenant_workflow_active_index";`);
  }

}
