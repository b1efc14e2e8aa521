import { Migration } from '@mikro-orm/migrations';

/**
 * Approval status `withdrawn`: the request of a run cancelled while it was pending (the cancel sets it
 * from now on). Requests of runs cancelled before this release read `pending` although nothing can
 * decide them: they are withdrawn here, `decided_at` their run's cancel time (`completed_at`).
 *
 * approval_requests and durable_runs force row-level security on the owner too, and the tenant
 * setting is unset in a migration: the data fix walks the tenants of pending requests (read with RLS
 * off for approval_requests alone, under the ACCESS EXCLUSIVE lock the constraint change takes anyway,
 * and forced again before the migration commits) and updates each one's under its own tenant setting,
 * so durable_runs is read through its policy and never has RLS lifted.
 */
export class Migration20261203134347_approval_withdrawn_status extends Migration {

  override name = 'Migration20261203134347_approval_withdrawn_status';

  override up(): void | Promise<void> {
    this.addSql(`alter table "approval_requests" drop constraint "approval_requests_status_check";`);
    this.addSql(`alter table "approval_requests" add constraint "approval_requests_status_check" check ("status" in ('pending', 'approved', 'rejected', 'expired', 'withdrawn'));`);
    this.addSql(`alter table "approval_requests" no force row level security;`);
    this.addSql(`do $$
declare t uuid;
begin
  for t in select distinct tenant_id from approval_requests where status = 'pending' loop
    perform set_config('app.tenant_id', t::text, true);
    update approval_requests a set status = 'withdrawn', decided_at = r.completed_at, updated_at = now()
      from durable_runs r
     where a.tenant_id = t and a.status = 'pending' and r.tenant_id = a.tenant_id and r.id = a.run_id and r.status = 'cancelled';
  end loop;
  perform set_config('app.tenant_id', '', true);
end $$;`);
    this.addSql(`alter table "approval_requests" force row level security;`);
  }

  override down(): void | Promise<void> {
    // The old code knows no `withdrawn`: such requests read `pending` again (their runs stay cancelled).
    this.addSql(`alter table "approval_requests" no force row level security;`);
    this.addSql(`update approval_requests set status = 'pending', decided_at = null, updated_at = now() where status = 'withdrawn';`);
    this.addSql(`alter table "approval_requests" force row level security;`);
    this.addSql(`alter table "approval_requests" drop constraint "approval_requests_status_check";`);
    this.addSql(`alter table "approval_requests" add constraint "approval_requests_status_check" check ("status" in ('pending', 'approved', 'rejected', 'expired'));`);
  }

}
