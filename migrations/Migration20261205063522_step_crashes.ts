import { Migration } from '@mikro-orm/migrations';

/**
 * A step that kills its worker every time ends its run `failed` after STEP_MAX_CRASHES crashes instead
 * of crash-looping the fleet (ADR 0016): `crash_seq` is the step whose executions were cut off by the
 * loss of their worker, `crash_count` how many times in a row. Added without rewriting the table (a
 * nullable column and a constant default).
 */
export class Migration20261205063522_step_crashes extends Migration {

  override name = 'Migration20261205063522_step_crashes';

  override up(): void | Promise<void> {
    this.addSql(`alter table "durable_runs" add "crash_seq" int null, add "crash_count" int not null default 0;`);
  }

  override down(): void | Promise<void> {
    this.addSql(`alter table "durable_runs" drop column "crash_seq", drop column "crash_count";`);
  }

}
