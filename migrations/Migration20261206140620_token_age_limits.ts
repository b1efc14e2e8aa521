import { Migration } from '@mikro-orm/migrations';

/**
 * `npm run token -- prune-revocations` judged which not-before revocations no token could still hit by
 * JWT_MAX_TOKEN_LIFETIME from its own environment: run with a shorter limit than the API's, it deleted rows
 * that still refused live tokens. Each API process now declares the token age it enforces here (ADR 0018,
 * amendment "The prune reads the APIs' limits"), and the prune goes by the longest declared. The trigger
 * makes every update's seen_at the database's time (the application role updates that column only), so no
 * code of the application can age a process's row out of the prune's window; its function names no
 * relation and runs with the temporary schema last, as every trigger function here (ADR 0001).
 */
export class Migration20261206140620_token_age_limits extends Migration {

  override name = 'Migration20261206140620_token_age_limits';

  override up(): void | Promise<void> {
    this.addSql(`create table "token_age_limits" ("instance" varchar(255) not null, "max_token_age_seconds" bigint not null, "published_at" timestamptz not null, "seen_at" timestamptz not null, primary key ("instance"));`);

    this.addSql(`alter table "token_age_limits" add constraint "token_age_limits_max_token_age_seconds_check" check (max_token_age_seconds >= 0);`);
    this.addSql(`create or replace function "token_age_limits_seen_now_fn"() returns trigger as \$\$ begin new.seen_at := now(); return new; end; \$\$ language plpgsql set search_path = pg_catalog, public, pg_temp;`);
    this.addSql(`create trigger "seen_now" BEFORE UPDATE on "token_age_limits" for each ROW execute function "token_age_limits_seen_now_fn"();`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop trigger if exists "seen_now" on "token_age_limits";`);
    this.addSql(`drop function if exists "token_age_limits_seen_now_fn"();`);
    this.addSql(`drop table if exists "token_age_limits" cascade;`);
  }

}
