import { Migration } from '@mikro-orm/migrations';

/**
 * Claims for partner offboardings submitted before the claims (Migration20261205120558: a new, empty
 * table), and by web processes of that release's predecessor until they were rolled: such a run still
 * in flight held no claim, so a second submission of its partner was accepted while it was queued,
 * and one of the two runs failed at freeze-partner. Each (tenant, partner) that no claim names and
 * that a run of the workflow still `pending`, `running` or `waiting`, or `failed`, holds is claimed for
 * that run: the one whose own record is live first, then an active one before a failed one, then the
 * oldest. A run whose record is abandoned holds nothing and is skipped. The partner is the reference
 * its steps read: the submission's, trimmed as the workflow's schema trims it (a producer's start
 * stores its input as given); an empty or over-long one is left to freeze-partner, which fails it. A
 * failed run of a version declared retired, or one whose retry is refused, is claimed like any failed
 * run: the next submission's guard takes such a claim over, as it would that run's own.
 *
 * Data only (no schema change). Tenant-owned tables force row-level security on the owner too and the
 * tenant setting is unset in a migration, so RLS is never lifted: the tenants come from durable_runs
 * through the system role's sweep policy (the owner is a member of dealix_system: ADR 0003, docs/runbook.md;
 * a role that does not hold its privileges would see no run and claim nothing, so the migration fails
 * instead, naming the grant), and each tenant's claims are written under its own tenant setting. `on conflict do nothing`: a claim a
 * submission takes meanwhile (this release's web processes run during the migration) is that
 * submission's, and the backfill waits for one in flight. Down leaves the claims: they are what the
 * claims release writes itself.
 */
export class Migration20261205143000_partner_offboarding_claims_backfill extends Migration {

  override name = 'Migration20261205143000_partner_offboarding_claims_backfill';

  override up(): void | Promise<void> {
    // JavaScript's String.prototype.trim: its white space and line terminators.
    const space = `U&'\\0009\\000A\\000B\\000C\\000D\\0020\\00A0\\1680\\2000\\2001\\2002\\2003\\2004\\2005\\2006\\2007\\2008\\2009\\200A\\2028\\2029\\202F\\205F\\3000\\FEFF'`;
    this.addSql(`do $$
declare t uuid;
begin
  -- Without the sweep policy every tenant's runs are hidden (RLS, no tenant set): the loop would claim
  -- nothing and the migration be recorded as applied, never to run again. Stop instead.
  if not pg_has_role(current_user, 'dealix_system', 'USAGE') then
    raise exception 'partner_offboarding_claims_backfill: role % does not hold dealix_system''s privileges, so it reads no tenant''s runs and would claim nothing: GRANT dealix_system TO %, then migrate again (docs/runbook.md)', current_user, current_user;
  end if;
  for t in select distinct tenant_id from durable_runs where workflow = 'partner-offboarding' and status in ('pending', 'running', 'waiting', 'failed') loop
    perform set_config('app.tenant_id', t::text, true);
    insert into partner_offboarding_claims (id, tenant_id, partner_reference, run_id, claimed_at)
    select distinct on (h.reference) gen_random_uuid(), t, h.reference, h.id, now()
      from (select r.id, r.status, r.created_at, btrim(r.input->'partner'->>'reference', ${space}) as reference,
                   (select o.status from partner_offboardings o where o.tenant_id = t and o.run_id = r.id) as record
              from durable_runs r
             where r.tenant_id = t and r.workflow = 'partner-offboarding' and r.status in ('pending', 'running', 'waiting', 'failed')) h
     where h.reference <> '' and length(h.reference) <= 100 and h.record is distinct from 'abandoned'
     order by h.reference, h.record is not null desc, h.status = 'failed', h.created_at, h.id
    on conflict (tenant_id, partner_reference) do nothing;
  end loop;
  perform set_config('app.tenant_id', '', true);
end $$;`);
  }

  override down(): void | Promise<void> {
    // Nothing: a claim is never deleted (the claims release's own submissions write the same rows).
  }

}
