import { Migration } from '@mikro-orm/migrations';

/**
 * follows_its_predecessor (Migration20261206163232_step_checkpoints_in_order; stepOrderTriggers in
 * durable-checkpoint.entity.ts) refused a step's checkpoint on a run that ended since the step read it with
 * 42501, before the checkpoint's own guard on the run (in the same statement, a moment later) could refuse it
 * with DX001: a run cancelled while its waiting step (or a first or last step, or one that emits events) ran
 * had that step taken for failing — retried with backoff, a failed checkpoint on the cancelled run at its last
 * attempt —, and a re-delivered job that lost its last step to another execution that ended the run failed
 * its attempt instead of reading the run. Such a run is now refused with DX001, as the evidence pack's trigger
 * refuses one (run_in_progress). The function alone is replaced (the trigger stays; no lock on the table
 * beyond the function's), with the fixed search_path the schema generator neither writes nor compares.
 */
export class Migration20261206173439_step_checkpoint_of_an_ended_run extends Migration {

  override name = 'Migration20261206173439_step_checkpoint_of_an_ended_run';

  override up(): void | Promise<void> {
    this.addSql(`create or replace function "durable_checkpoints_follows_its_predecessor_fn"() returns trigger as \$\$ begin if exists (select from public.durable_runs r where r.tenant_id = new.tenant_id and r.id = new.run_id and (r.status || '') in ('pending', 'running', 'waiting') and new.sequence_num between 1 and r.step_count and (new.sequence_num = 1 or exists (select from public.durable_checkpoints c where c.tenant_id = new.tenant_id and c.run_id = new.run_id and c.sequence_num = new.sequence_num - 1 and c.status = 'completed'))) then return new; end if; if pg_has_role(current_user, (select c.relowner from pg_catalog.pg_class c where c.oid = tg_relid), 'MEMBER') then return new; end if; if exists (select from public.durable_runs r where r.tenant_id = new.tenant_id and r.id = new.run_id and not (r.status || '') in ('pending', 'running', 'waiting')) then raise exception 'checkpoint % of run % (step %, %): the run is no longer active', new.sequence_num, new.run_id, new.step_name, new.status using errcode = 'DX001'; end if; raise exception 'checkpoint % of run % (step %, %): a step''s checkpoint is written while its run is active, within its steps, once the step before it completed', new.sequence_num, new.run_id, new.step_name, new.status using errcode = 'insufficient_privilege'; end; \$\$ language plpgsql set search_path = pg_catalog, public, pg_temp;`);
  }

  override down(): void | Promise<void> {
    this.addSql(`create or replace function "durable_checkpoints_follows_its_predecessor_fn"() returns trigger as \$\$ begin if exists (select from public.durable_runs r where r.tenant_id = new.tenant_id and r.id = new.run_id and (r.status || '') in ('pending', 'running', 'waiting') and new.sequence_num between 1 and r.step_count and (new.sequence_num = 1 or exists (select from public.durable_checkpoints c where c.tenant_id = new.tenant_id and c.run_id = new.run_id and c.sequence_num = new.sequence_num - 1 and c.status = 'completed'))) then return new; end if; if pg_has_role(current_user, (select c.relowner from pg_catalog.pg_class c where c.oid = tg_relid), 'MEMBER') then return new; end if; raise exception 'checkpoint % of run % (step %, %): a step''s checkpoint is written while its run is active, within its steps, once the step before it completed', new.sequence_num, new.run_id, new.step_name, new.status using errcode = 'insufficient_privilege'; end; \$\$ language plpgsql set search_path = pg_catalog, public, pg_temp;`);
  }

}
