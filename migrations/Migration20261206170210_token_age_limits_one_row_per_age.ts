import { Migration } from '@mikro-orm/migrations';

/**
 * `token_age_limits` was keyed by the API process's instance id (new at each start), and the application
 * role could insert any number of rows, pruned only 7 days after they were last seen. Now one row per
 * declared age (ADR 0018, amendment "One row per declared age, and a bounded prune"): the trigger
 * `declarations_capped` makes a declaration of an age already there move that row's seen_at and skip the
 * insert, and refuses a new age past TOKEN_AGE_DECLARATIONS_MAX (100) rows. `instance` stays unique (the
 * first declarer's): the previous release's `on conflict (instance)` still plans, and its insert lands on its
 * age's row, so web processes of both releases declare during a roll. What the prune reads (the longest age
 * seen within the window, any 0, any row) is unchanged: of the rows of one age, the one seen last is kept.
 * The function runs with the temporary schema last, as every trigger function here (ADR 0001). ACCESS
 * EXCLUSIVE on the table for the migration's transaction (a handful of rows): a declaring process waits.
 */
export class Migration20261206170210_token_age_limits_one_row_per_age extends Migration {

  override name = 'Migration20261206170210_token_age_limits_one_row_per_age';

  override up(): void | Promise<void> {
    this.addSql(`lock table "token_age_limits" in access exclusive mode;`);
    this.addSql(`delete from "token_age_limits" t using "token_age_limits" u where u.max_token_age_seconds = t.max_token_age_seconds and (u.seen_at, u.instance) > (t.seen_at, t.instance);`);
    this.addSql(`alter table "token_age_limits" drop constraint "token_age_limits_pkey";`);
    this.addSql(`alter table "token_age_limits" add constraint "token_age_limits_instance_unique" unique ("instance");`);
    this.addSql(`alter table "token_age_limits" add primary key ("max_token_age_seconds");`);
    this.addSql(`create or replace function "token_age_limits_declarations_capped_fn"() returns trigger as \$\$ begin if exists (select 1 from token_age_limits where max_token_age_seconds = new.max_token_age_seconds) then update token_age_limits set seen_at = now() where max_token_age_seconds = new.max_token_age_seconds; return null; end if; perform pg_advisory_xact_lock(hashtext('dealix:token_age_limits')); if (select count(*) from token_age_limits) >= 100 then raise exception using errcode = '54000', message = 'token_age_limits holds 100 declared token ages, the most it takes (ADR 0018): a new one is refused', hint = 'As the owner, delete the rows no API process enforces (select * from token_age_limits order by seen_at), then start the API again'; end if; return new; end; \$\$ language plpgsql set search_path = pg_catalog, public, pg_temp;`);
    this.addSql(`create trigger "declarations_capped" BEFORE INSERT on "token_age_limits" for each ROW execute function "token_age_limits_declarations_capped_fn"();`);
  }

  override down(): void | Promise<void> {
    this.addSql(`alter table "token_age_limits" drop constraint "token_age_limits_instance_unique";`);
    this.addSql(`alter table "token_age_limits" drop constraint "token_age_limits_pkey";`);
    this.addSql(`drop trigger if exists "declarations_capped" on "token_age_limits";`);
    this.addSql(`drop function if exists "token_age_limits_declarations_capped_fn"();`);
    this.addSql(`alter table "token_age_limits" add primary key ("instance");`);
  }

}
