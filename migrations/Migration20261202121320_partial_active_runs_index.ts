import { Migration } from '@mikro-orm/migrations';

export class Migration20261202121320_partial_active_runs_index extends Migration {

  override name = 'Migration20261202121320_partial_active_runs_index';

  override up(): void | Promise<void> {
    this.addSql(`drop index "durable_runs_tenant_status_index";`);
    this.addSql(`create index "durable_runs_tenant_active_index" on "durable_runs" ("tenant_id", "status") where status in ('pending', 'running', 'waiting');`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop index "durable_runs_tenant_active_index";`);
    this.addSql(`create index "durable_runs_tenant_status_index" on "durable_runs" ("tenant_id", "status");`);
  }

}
