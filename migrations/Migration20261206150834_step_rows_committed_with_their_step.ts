import { Migration } from '@mikro-orm/migrations';

/**
 * An evidence pack and an approval request commit only with the checkpoint of the step that writes them
 * (ADR 0001, amendment "A step's rows commit with its checkpoint"; committedWithItsStep in
 * durable-checkpoint.entity.ts). The application role may insert both tables, and could write a pack for a
 * run still at its first steps (its evidence step then failed on the pack's unique key, or /verify reported
 * a pack the run never produced), or a request before the run's approval step (step 3 then failed on it, or
 * an approver decided a request whose packet the step never wrote). `written_by_its_step`, a constraint
 * trigger after insert on each table, deferred to the commit, refuses (42501), but for the table's owner: a
 * pack unless its run's `evidence-pack` checkpoint, completed, names its id and sha256; a request unless its
 * run's `approval-packet` checkpoint, waiting or completed (class A), names its id, class and required
 * approvals. Every write the steps make passes (rows and checkpoint in one transaction, ADR 0005; under
 * group commit the check reads the row's own tenant's checkpoints, and puts the tenant setting back).
 * The schema generator compares timing, events and body, not that these are deferred constraint
 * triggers nor the functions' search_path: keep `constraint … deferrable initially deferred` and
 * `set search_path` if they are ever created again. Rows already there are not checked. Creating each
 * trigger takes SHARE ROW EXCLUSIVE on its table until commit (steps 3 and 4 wait; reads do not). Down
 * drops the triggers and their functions.
 */

export class Migration20261206150834_step_rows_committed_with_their_step extends Migration {

  override name = 'Migration20261206150834_step_rows_committed_with_their_step';

  override up(): void | Promise<void> {
    this.addSql(`create or replace function "approval_requests_written_by_its_step_fn"() returns trigger as \$\$ begin if pg_has_role(current_user, (select c.relowner from pg_catalog.pg_class c where c.oid = tg_relid), 'MEMBER') then return null; end if; declare setting text := current_setting('app.tenant_id', true); begin perform set_config('app.tenant_id', new.tenant_id::text, true); if not exists (select from public.durable_checkpoints c where c.tenant_id = new.tenant_id and c.run_id = new.run_id and c.step_name = 'approval-packet' and c.status in ('waiting', 'completed') and c.output->>'approval_request_id' = new.id::text and c.output->>'approval_class' = new.approval_class::text and c.output->>'required_approvals' = new.required_approvals::text) then raise exception 'approval request % names run % of tenant %, whose approval-packet step''s checkpoint does not name it: it is written by that step, with its checkpoint', new.id, new.run_id, new.tenant_id using errcode = 'insufficient_privilege'; end if; perform set_config('app.tenant_id', coalesce(setting, ''), true); end; return null; end; \$\$ language plpgsql set search_path = pg_catalog, public, pg_temp;`);
    this.addSql(`create constraint trigger "written_by_its_step" AFTER INSERT on "approval_requests" deferrable initially deferred for each ROW execute function "approval_requests_written_by_its_step_fn"();`);

    this.addSql(`create or replace function "evidence_packs_written_by_its_step_fn"() returns trigger as \$\$ begin if pg_has_role(current_user, (select c.relowner from pg_catalog.pg_class c where c.oid = tg_relid), 'MEMBER') then return null; end if; declare setting text := current_setting('app.tenant_id', true); begin perform set_config('app.tenant_id', new.tenant_id::text, true); if not exists (select from public.durable_checkpoints c where c.tenant_id = new.tenant_id and c.run_id = new.run_id and c.step_name = 'evidence-pack' and c.status in ('completed') and c.output->>'evidence_pack_id' = new.id::text and c.output->>'sha256' = new.sha256::text) then raise exception 'evidence pack % names run % of tenant %, whose evidence-pack step''s checkpoint does not name it: it is written by that step, with its checkpoint', new.id, new.run_id, new.tenant_id using errcode = 'insufficient_privilege'; end if; perform set_config('app.tenant_id', coalesce(setting, ''), true); end; return null; end; \$\$ language plpgsql set search_path = pg_catalog, public, pg_temp;`);
    this.addSql(`create constraint trigger "written_by_its_step" AFTER INSERT on "evidence_packs" deferrable initially deferred for each ROW execute function "evidence_packs_written_by_its_step_fn"();`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop trigger if exists "written_by_its_step" on "approval_requests";`);
    this.addSql(`drop function if exists "approval_requests_written_by_its_step_fn"();`);

    this.addSql(`drop trigger if exists "written_by_its_step" on "evidence_packs";`);
    this.addSql(`drop function if exists "evidence_packs_written_by_its_step_fn"();`);
  }

}
