import { Migration } from '@mikro-orm/migrations';

export class Migration20261205042755_sweeper_pages_status_updated_id_index extends Migration {

  override name = 'Migration20261205042755_sweeper_pages_status_updated_id_index';

  override up(): void | Promise<void> {
    // The new index first: run retention's read of ended runs by age is never left without one.
    this.addSql(`create index if not exists "durable_runs_status_updated_id_index" on "durable_runs" ("status", "updated_at", "id");`);
    this.addSql(`drop index if exists "durable_runs_status_updated_index";`);
  }

  override down(): void | Promise<void> {
    this.addSql(`create index if not exists "durable_runs_status_updated_index" on "durable_runs" ("status", "updated_at");`);
    this.addSql(`drop index if exists "durable_runs_status_updated_id_index";`);
  }

}
