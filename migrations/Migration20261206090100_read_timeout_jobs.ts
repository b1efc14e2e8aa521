import { Migration } from '@mikro-orm/migrations';

/**
 * An active run whose jobs can never read it (every attempt meets a statement or lock timeout) fails
 * `infrastructure_exhausted` once as many of its jobs have ended so as its step has attempts, instead
 * of being re-enqueued by the sweeper for ever with its attempts afresh each time (ADR 0002,
 * amendment): `read_timeout_jobs` counts them, at the step `read_timeout_seq` (a job at a later step
 * starts the count afresh, as `crash_seq` does `crash_count`). Added without rewriting the table (a
 * constant default and a nullable column).
 */
export class Migration20261206090100_read_timeout_jobs extends Migration {

  override name = 'Migration20261206090100_read_timeout_jobs';

  override up(): void | Promise<void> {
    this.addSql(`alter table "durable_runs" add "read_timeout_jobs" int not null default 0, add "read_timeout_seq" int null;`);
  }

  override down(): void | Promise<void> {
    this.addSql(`alter table "durable_runs" drop column "read_timeout_jobs", drop column "read_timeout_seq";`);
  }

}
