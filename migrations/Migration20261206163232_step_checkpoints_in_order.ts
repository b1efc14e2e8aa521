import { Migration } from '@mikro-orm/migrations';

/**
 * A run's checkpoints follow its steps' order (ADR 0001, amendment "A step's checkpoint follows its
 * predecessor"; stepOrderTriggers in durable-checkpoint.entity.ts). The application role writes checkpoints,
 * and could write a later step's ahead of the steps between — checkpoint 4 naming a pack of its making while
 * step 2 still ran —, which the run's next job replays. `follows_its_predecessor`, before insert of a
 * checkpoint that is not `failed`, refuses (42501) unless its run is active, its sequence_num within the run's
 * step_count, and the checkpoint before it completed (a first step has none); `completes_only_a_wait`, before
 * an update of one that is not completed to anything but `failed`, refuses unless it is a resume's: `waiting`
 * to `completed`, the run waiting, the checkpoint before it completed. The owner is not held. Both are plain
 * row triggers (checked at the statement, under its own tenant: a group commit's members each have theirs),
 * SECURITY INVOKER, with the fixed search_path, which the schema generator neither writes nor compares: keep
 * `set search_path` if they are ever created again. Rows already there are not checked. Creating the triggers
 * takes SHARE ROW EXCLUSIVE on durable_checkpoints until commit: steps wait that long (reads do not).
 */

export class Migration20261206163232_step_checkpoints_in_order extends Migration {

  override name = 'Migration20261206163232_step_checkpoints_in_order';

  override up(): void | Promise<void> {
    this.addSql(`create or replace function "durable_checkpoints_follows_its_predecessor_fn"() returns trigger as \$\$ begin if exists (select from public.durable_runs r where r.tenant_id = new.tenant_id and r.id = new.run_id and (r.status || '') in ('pending', 'running', 'waiting') and new.sequence_num between 1 and r.step_count and (new.sequence_num = 1 or exists (select from public.durable_checkpoints c where c.tenant_id = new.tenant_id and c.run_id = new.run_id and c.sequence_num = new.sequence_num - 1 and c.status = 'completed'))) then return new; end if; if pg_has_role(current_user, (select c.relowner from pg_catalog.pg_class c where c.oid = tg_relid), 'MEMBER') then return new; end if; raise exception 'checkpoint % of run % (step %, %): a step''s checkpoint is written while its run is active, within its steps, once the step before it completed', new.sequence_num, new.run_id, new.step_name, new.status using errcode = 'insufficient_privilege'; end; \$\$ language plpgsql set search_path = pg_catalog, public, pg_temp;`);
    this.addSql(`create trigger "follows_its_predecessor" BEFORE INSERT on "durable_checkpoints" for each ROW
  when ((new.status <> 'failed'::text)) execute function "durable_checkpoints_follows_its_predecessor_fn"();`);
    this.addSql(`create or replace function "durable_checkpoints_completes_only_a_wait_fn"() returns trigger as \$\$ begin if old.status = 'waiting' and new.status = 'completed' and exists (select from public.durable_runs r where r.tenant_id = new.tenant_id and r.id = new.run_id and (r.status || '') = 'waiting' and new.sequence_num between 1 and r.step_count and (new.sequence_num = 1 or exists (select from public.durable_checkpoints c where c.tenant_id = new.tenant_id and c.run_id = new.run_id and c.sequence_num = new.sequence_num - 1 and c.status = 'completed'))) then return new; end if; if pg_has_role(current_user, (select c.relowner from pg_catalog.pg_class c where c.oid = tg_relid), 'MEMBER') then return new; end if; raise exception 'checkpoint % of run % (step %, %): a checkpoint that is not completed becomes only failed, or completed from waiting while its run waits', new.sequence_num, new.run_id, new.step_name, new.status using errcode = 'insufficient_privilege'; end; \$\$ language plpgsql set search_path = pg_catalog, public, pg_temp;`);
    this.addSql(`create trigger "completes_only_a_wait" BEFORE UPDATE on "durable_checkpoints" for each ROW
  when (((old.status <> 'completed'::text) AND (new.status <> 'failed'::text))) execute function "durable_checkpoints_completes_only_a_wait_fn"();`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop trigger if exists "follows_its_predecessor" on "durable_checkpoints";`);
    this.addSql(`drop function if exists "durable_checkpoints_follows_its_predecessor_fn"();`);
    this.addSql(`drop trigger if exists "completes_only_a_wait" on "durable_checkpoints";`);
    this.addSql(`drop function if exists "durable_checkpoints_completes_only_a_wait_fn"();`);
  }

}
