import { Migration } from '@mikro-orm/migrations';

/**
 * `seen_now` set an update's seen_at to now() but left an insert's as written: the application role could
 * insert a declaration seen a century ahead, which the prune counted for ever (never past its window,
 * never removed) — a `0` there kept every not-before for good, any other age stood in for "no API seen".
 * An insert's seen_at is now at most now() (one in the past only counts less; the tests write stale rows
 * so, as the owner). The function is replaced in place and the trigger recreated in this migration's
 * transaction, so no insert or update runs without it; it keeps its search_path (ADR 0001).
 */
export class Migration20261206144410_token_age_limits_seen_on_insert extends Migration {

  override name = 'Migration20261206144410_token_age_limits_seen_on_insert';

  override up(): void | Promise<void> {
    this.addSql(`create or replace function "token_age_limits_seen_now_fn"() returns trigger as \$\$ begin new.seen_at := case when tg_op = 'INSERT' then least(new.seen_at, now()) else now() end; return new; end; \$\$ language plpgsql set search_path = pg_catalog, public, pg_temp;`);
    this.addSql(`drop trigger if exists "seen_now" on "token_age_limits";`);
    this.addSql(`create trigger "seen_now" BEFORE INSERT OR UPDATE on "token_age_limits" for each ROW execute function "token_age_limits_seen_now_fn"();`);
  }

  override down(): void | Promise<void> {
    this.addSql(`create or replace function "token_age_limits_seen_now_fn"() returns trigger as \$\$ begin new.seen_at := now(); return new; end; \$\$ language plpgsql set search_path = pg_catalog, public, pg_temp;`);
    this.addSql(`drop trigger if exists "seen_now" on "token_age_limits";`);
    this.addSql(`create trigger "seen_now" BEFORE UPDATE on "token_age_limits" for each ROW execute function "token_age_limits_seen_now_fn"();`);
  }

}
