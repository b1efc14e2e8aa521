import { Migration } from '@mikro-orm/migrations';

/**
 * Which job ends `read_timeout_jobs` counted (ADR 0002, amendment): the newest few, each a job's id, its
 * creation time and its finished attempts. An end already listed is not counted again, so two executions
 * of one job at once (a stalled job re-delivered while its first worker still runs) or the count sent
 * again no longer count one job twice and fail a run a job early. A nullable column: no rewrite.
 */
export class Migration20261206105327_read_timeout_keys extends Migration {

  override name = 'Migration20261206105327_read_timeout_keys';

  override up(): void | Promise<void> {
    this.addSql(`alter table "durable_runs" add "read_timeout_keys" text[] null;`);
  }

  override down(): void | Promise<void> {
    this.addSql(`alter table "durable_runs" drop column "read_timeout_keys";`);
  }

}
