import { Migration } from '@mikro-orm/migrations';

/**
 * A completed checkpoint is history (ADR 0001, amendment "Checkpoints are history"): a restrictive
 * policy lets no role bound by row-level security (the application role; the owner, FORCE) delete one,
 * and a BEFORE UPDATE trigger refuses any update of one but a superuser's (SECURITY INVOKER, as the
 * seal trigger). The code does neither: a retry deletes its failed step's checkpoint only, a failure's
 * upsert skips a completed one, a decision completes a `waiting` one. The grants that go with them (no
 * DELETE on durable_runs for the application, whose cascade would take the checkpoints; UPDATE of the
 * columns the code writes only) are roles.ts's, applied by every `db:migrate`.
 */
export class Migration20261206021816_completed_checkpoints_kept extends Migration {

  override name = 'Migration20261206021816_completed_checkpoints_kept';

  override up(): void | Promise<void> {
    this.addSql(`create or replace function "durable_checkpoints_completed_is_history_fn"() returns trigger as \$\$ begin if (select rolsuper from pg_roles where rolname = current_user) then return new; end if; raise exception 'checkpoint % of run % (step %) is completed: a completed checkpoint is never updated', old.sequence_num, old.run_id, old.step_name using errcode = 'insufficient_privilege'; end; \$\$ language plpgsql;`);
    this.addSql(`create trigger "completed_is_history" BEFORE UPDATE on "durable_checkpoints" for each ROW
  when ((old.status = 'completed'::text)) execute function "durable_checkpoints_completed_is_history_fn"();`);
    this.addSql(`create policy "durable_checkpoints_completed_no_delete" on "durable_checkpoints" as restrictive for delete using ((status <> 'completed'::text));`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop policy "durable_checkpoints_completed_no_delete" on "durable_checkpoints";`);

    this.addSql(`drop trigger if exists "completed_is_history" on "durable_checkpoints";`);
    this.addSql(`drop function if exists "durable_checkpoints_completed_is_history_fn"();`);
  }

}
