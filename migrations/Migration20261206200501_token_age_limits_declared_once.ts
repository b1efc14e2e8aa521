import { Migration } from '@mikro-orm/migrations';

/**
 * The trigger `declarations_capped` (token_age_limits) checked whether the declared age's row existed, then
 * took the advisory lock the cap is counted under, and did not check again: two first declarations of one
 * age at once both passed the check, and the second to get the lock inserted after the first had committed
 * the row — 23505 on the key, which the previous release's `on conflict (instance)` does not absorb (its
 * API process served 503 until its next reconcile). The age is now checked again under the lock (ADR 0018,
 * amendment "One row per declared age, and a bounded prune"), and the refusal of a new age at the cap names
 * the rows safe to delete (not seen within TOKEN_AGE_SEEN_WINDOW) and how to see them. The function alone is
 * replaced, with the search_path every trigger function here runs with (ADR 0001): no lock on the table, no
 * row read; the trigger calls the new body from the next insert on.
 */
export class Migration20261206200501_token_age_limits_declared_once extends Migration {

  override name = 'Migration20261206200501_token_age_limits_declared_once';

  override up(): void | Promise<void> {
    this.addSql(`create or replace function "token_age_limits_declarations_capped_fn"() returns trigger as \$\$ begin if exists (select 1 from token_age_limits where max_token_age_seconds = new.max_token_age_seconds) then update token_age_limits set seen_at = now() where max_token_age_seconds = new.max_token_age_seconds; return null; end if; perform pg_advisory_xact_lock(hashtext('dealix:token_age_limits')); if exists (select 1 from token_age_limits where max_token_age_seconds = new.max_token_age_seconds) then update token_age_limits set seen_at = now() where max_token_age_seconds = new.max_token_age_seconds; return null; end if; if (select count(*) from token_age_limits) >= 100 then raise exception using errcode = '54000', message = 'token_age_limits holds 100 declared token ages, the most it takes (ADR 0018): a new one is refused', hint = 'Rows not seen within 7 days are safe to delete (the prune ignores them): as the owner (MIGRATION_DATABASE_URL), see them with select * from token_age_limits where seen_at <= now() - interval ''7 days'' order by seen_at; npm run token -- prune-revocations deletes them (or: delete from token_age_limits where seen_at <= now() - interval ''7 days''). None: every row was declared within 7 days, far more ages than web processes declare, so the application role inserted them: delete only ages no web process enforces (each logs its max_token_age_seconds in "token revocations loaded"), and find what inserts them. A refused process declares again at its next reconcile (TOKEN_REVOCATION_RECONCILE)'; end if; return new; end; \$\$ language plpgsql set search_path = pg_catalog, public, pg_temp;`);
  }

  override down(): void | Promise<void> {
    this.addSql(`create or replace function "token_age_limits_declarations_capped_fn"() returns trigger as \$\$ begin if exists (select 1 from token_age_limits where max_token_age_seconds = new.max_token_age_seconds) then update token_age_limits set seen_at = now() where max_token_age_seconds = new.max_token_age_seconds; return null; end if; perform pg_advisory_xact_lock(hashtext('dealix:token_age_limits')); if (select count(*) from token_age_limits) >= 100 then raise exception using errcode = '54000', message = 'token_age_limits holds 100 declared token ages, the most it takes (ADR 0018): a new one is refused', hint = 'As the owner, delete the rows no API process enforces (select * from token_age_limits order by seen_at), then start the API again'; end if; return new; end; \$\$ language plpgsql set search_path = pg_catalog, public, pg_temp;`);
  }

}
