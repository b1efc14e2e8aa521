import { Migration } from '@mikro-orm/migrations';

export class Migration20261202040955_composite_checkpoint_run_fk extends Migration {

  override name = 'Migration20261202040955_composite_checkpoint_run_fk';

  override up(): void | Promise<void> {
    this.addSql(`alter table "durable_checkpoints" drop constraint "durable_checkpoints_run_id_foreign";`);

    this.addSql(`alter table "durable_runs" add constraint "durable_runs_tenant_id_id_unique" unique ("tenant_id", "id");`);

    this.addSql(`alter table "durable_checkpoints" add constraint "durable_checkpoints_tenant_id_run_id_foreign" foreign key ("tenant_id", "run_id") references "durable_runs" ("tenant_id", "id") on delete cascade;`);
  }

  override down(): void | Promise<void> {
    this.addSql(`alter table "durable_checkpoints" drop constraint "durable_checkpoints_tenant_id_run_id_foreign";`);

    this.addSql(`alter table "durable_checkpoints" add constraint "durable_checkpoints_run_id_foreign" foreign key ("run_id") references "durable_runs" ("id") on delete cascade;`);

    this.addSql(`alter table "durable_runs" drop constraint "durable_runs_tenant_id_id_unique";`);
  }

}
