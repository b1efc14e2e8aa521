import { Migration } from '@mikro-orm/migrations';

/**
 * Four eyes held by the database (ADR 0010, amendment "Four eyes in the database"; POLICY_CHANGE_FOUR_EYES
 * in approval.entities.ts). The application role could insert a policy change already `approved`, or mark
 * one approved by its own proposer or by nobody, and then apply it: `record_version` checks the policy
 * against the change, not the change's own decision. `four_eyes`, a BEFORE INSERT OR UPDATE trigger on
 * `approval_policy_changes`, refuses (42501) but for the table's owner: an insert other than pending and
 * undecided; any update of a decided change; an update of what was proposed; `approved` without an admin
 * other than the proposer, at a time of its own transaction, before `expires_at`; `rejected` without its
 * admin at a time of its own transaction; `expired`/`superseded` with a decider or without a time; `pending` again. Every
 * write the API makes passes (proposeChange, approveChange, rejectChange, supersedePending). Its function
 * runs with the fixed search_path (pg_catalog, public, pg_temp), which the schema generator does not write.
 * Rows already there are not checked. Creating the trigger takes SHARE ROW EXCLUSIVE on the table until
 * commit (policy changes wait; reads do not). Down drops the trigger and its function.
 */

export class Migration20261206140745_policy_change_four_eyes extends Migration {

  override name = 'Migration20261206140745_policy_change_four_eyes';

  override up(): void | Promise<void> {
    this.addSql(`create or replace function "approval_policy_changes_four_eyes_fn"() returns trigger as \$\$ begin if pg_has_role(current_user, (select c.relowner from pg_catalog.pg_class c where c.oid = tg_relid), 'MEMBER') then return new; end if; if tg_op = 'INSERT' then if new.status <> 'pending' or new.decided_by is not null or new.decided_at is not null then raise exception 'approval policy change % of tenant %: a change is proposed pending, undecided; only a second admin approves it (ADR 0010, four eyes)', new.id, new.tenant_id using errcode = 'insufficient_privilege'; end if; return new; end if; if new is not distinct from old then return new; end if; if old.status <> 'pending' then raise exception 'approval policy change % of tenant %: it is decided, and a decision is final (ADR 0010, four eyes)', new.id, new.tenant_id using errcode = 'insufficient_privilege'; end if; if (new.id, new.tenant_id, new.policy, new.base_version, new.base_policy, new.loosens, new.proposed_by, new.created_at, new.expires_at) is distinct from (old.id, old.tenant_id, old.policy, old.base_version, old.base_policy, old.loosens, old.proposed_by, old.created_at, old.expires_at) then raise exception 'approval policy change % of tenant %: what was proposed, by whom and when, is kept as proposed (ADR 0010, four eyes)', new.id, new.tenant_id using errcode = 'insufficient_privilege'; end if; if new.status = 'approved' then if new.decided_by is null or new.decided_by = new.proposed_by or not (coalesce(new.decided_at between now() and statement_timestamp(), false)) or new.expires_at <= statement_timestamp() then raise exception 'approval policy change % of tenant %: only an admin other than its proposer approves it, now, before it expires (ADR 0010, four eyes)', new.id, new.tenant_id using errcode = 'insufficient_privilege'; end if; elsif new.status = 'rejected' then if new.decided_by is null or not (coalesce(new.decided_at between now() and statement_timestamp(), false)) then raise exception 'approval policy change % of tenant %: a rejection names its admin, now (ADR 0010, four eyes)', new.id, new.tenant_id using errcode = 'insufficient_privilege'; end if; elsif new.status in ('expired', 'superseded') then if new.decided_by is not null or new.decided_at is null then raise exception 'approval policy change % of tenant %: nobody decides an expired or superseded change (ADR 0010, four eyes)', new.id, new.tenant_id using errcode = 'insufficient_privilege'; end if; else raise exception 'approval policy change % of tenant %: a pending change moves only to a decision (ADR 0010, four eyes)', new.id, new.tenant_id using errcode = 'insufficient_privilege'; end if; return new; end; \$\$ language plpgsql set search_path = pg_catalog, public, pg_temp;`);
    this.addSql(`create trigger "four_eyes" BEFORE INSERT OR UPDATE on "approval_policy_changes" for each ROW execute function "approval_policy_changes_four_eyes_fn"();`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop trigger if exists "four_eyes" on "approval_policy_changes";`);
    this.addSql(`drop function if exists "approval_policy_changes_four_eyes_fn"();`);
  }

}
