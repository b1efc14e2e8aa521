import { Migration } from '@mikro-orm/migrations';

/**
 * A failed run can be retried (POST /api/v1/golden-path/runs/:id/retry, ADR 0009): `retry_count` is
 * the generation of the run's job ids, `retry_history` what each retry was retried from. Both are
 * added without rewriting the table (a constant default and a nullable column).
 */
export class Migration20261203134431_retry_history extends Migration {

  override name = 'Migration20261203134431_retry_history';

  override up(): void | Promise<void> {
    this.addSql(`alter table "durable_runs" add "retry_count" int not null default 0, add "retry_history" jsonb null;`);
  }

  override down(): void | Promise<void> {
    this.addSql(`alter table "durable_runs" drop column "retry_count", drop column "retry_history";`);
  }

}
