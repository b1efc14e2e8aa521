import { Migration } from '@mikro-orm/migrations';

/**
 * The floor's clock is the database's (ADR 0011, amendment of that name): the retention floors of
 * `durable_runs_system_retention` and `webhook_deliveries_system_retention` read `updated_at`, which the
 * application role writes — and the application role reaches the system role. It could end a run that had
 * waited for days (or settle a delivery pending for days) leaving its old `updated_at`, backdate it, or
 * insert one already ended and a week old, then delete it at once as the system role. The trigger
 * `updated_at_not_backdated` on both tables gives a row whose `updated_at` is before the transaction's
 * start now() instead, when it is inserted or an update writes `updated_at` or moves `status` (every write
 * the code makes is now() or later: unchanged); a superuser's is kept (repairs, fixtures). Existing rows are
 * not touched. Each function runs with the fixed search_path of
 * Migration20261206081500_trigger_functions_search_path, which the schema generator does not write.
 * Creating a trigger takes SHARE ROW EXCLUSIVE on each table until commit (writes wait; reads do not).
 * Down drops both triggers and their functions.
 */
export class Migration20261206111100_retention_clock extends Migration {

  override name = 'Migration20261206111100_retention_clock';

  override up(): void | Promise<void> {
    this.addSql(`create or replace function "durable_runs_updated_at_not_backdated_fn"() returns trigger as \$\$ begin if tg_op = 'UPDATE' and new.updated_at is not distinct from old.updated_at and new.status is not distinct from old.status then return new; end if; if (select rolsuper from pg_catalog.pg_roles where rolname = current_user) then return new; end if; new.updated_at := now(); return new; end; \$\$ language plpgsql set search_path = pg_catalog, public, pg_temp;`);
    this.addSql(`create trigger "updated_at_not_backdated" BEFORE INSERT OR UPDATE on "durable_runs" for each ROW
  when ((new.updated_at < now())) execute function "durable_runs_updated_at_not_backdated_fn"();`);

    this.addSql(`create or replace function "webhook_deliveries_updated_at_not_backdated_fn"() returns trigger as \$\$ begin if tg_op = 'UPDATE' and new.updated_at is not distinct from old.updated_at and new.status is not distinct from old.status then return new; end if; if (select rolsuper from pg_catalog.pg_roles where rolname = current_user) then return new; end if; new.updated_at := now(); return new; end; \$\$ language plpgsql set search_path = pg_catalog, public, pg_temp;`);
    this.addSql(`create trigger "updated_at_not_backdated" BEFORE INSERT OR UPDATE on "webhook_deliveries" for each ROW
  when ((new.updated_at < now())) execute function "webhook_deliveries_updated_at_not_backdated_fn"();`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop trigger if exists "updated_at_not_backdated" on "durable_runs";`);
    this.addSql(`drop function if exists "durable_runs_updated_at_not_backdated_fn"();`);

    this.addSql(`drop trigger if exists "updated_at_not_backdated" on "webhook_deliveries";`);
    this.addSql(`drop function if exists "webhook_deliveries_updated_at_not_backdated_fn"();`);
  }

}
