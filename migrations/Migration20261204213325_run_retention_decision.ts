import { Migration } from '@mikro-orm/migrations';

export class Migration20261204213325_run_retention_decision extends Migration {

  override name = 'Migration20261204213325_run_retention_decision';

  override up(): void | Promise<void> {
    this.addSql(`create table "run_retention_decision" ("id" smallint not null, "retention_ms" bigint not null, "decided_by" varchar(255) not null, "generation" bigint not null, "decided_at" timestamptz not null, primary key ("id"));`);

    this.addSql(`alter table "run_retention_decision" add constraint "run_retention_decision_single_row" check (id = 1);`);
    this.addSql(`alter table "run_retention_decision" add constraint "run_retention_decision_retention_ms_check" check (retention_ms >= 0);`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop table if exists "run_retention_decision" cascade;`);
  }

}
