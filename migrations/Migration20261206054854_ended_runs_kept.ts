import { Migration } from '@mikro-orm/migrations';

/**
 * An ended run is history, as its completed checkpoints are (ADR 0001, amendment "Checkpoints are
 * history"): a BEFORE UPDATE trigger refuses any update of a run whose status is terminal, but a retry of
 * a failed one (failed → pending or running, runtime.ts `retry`) and a superuser's repair. Every other
 * statement of the code names active statuses in its WHERE, so the trigger never fires for it.
 */
export class Migration20261206054854_ended_runs_kept extends Migration {

  override name = 'Migration20261206054854_ended_runs_kept';

  override up(): void | Promise<void> {
    this.addSql(`create or replace function "durable_runs_ended_is_history_fn"() returns trigger as \$\$ begin if (select rolsuper from pg_roles where rolname = current_user) then return new; end if; if old.status = 'failed' and new.status in ('pending', 'running') then return new; end if; raise exception 'run % has ended (%): an ended run is never updated, but a failed one retried', old.id, old.status using errcode = 'insufficient_privilege'; end; \$\$ language plpgsql;`);
    this.addSql(`create trigger "ended_is_history" BEFORE UPDATE on "durable_runs" for each ROW
  when ((old.status = ANY (ARRAY['completed'::text, 'failed'::text, 'rejected'::text, 'approval_expired'::text, 'cancelled'::text]))) execute function "durable_runs_ended_is_history_fn"();`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop trigger if exists "ended_is_history" on "durable_runs";`);
    this.addSql(`drop function if exists "durable_runs_ended_is_history_fn"();`);
  }

}
