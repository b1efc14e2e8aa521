import { Migration } from '@mikro-orm/migrations';

/**
 * `durable_expect` (src/platform/db/routines.ts) runs with `search_path = pg_catalog, public, pg_temp`,
 * as the trigger functions do since Migration20261206081500_trigger_functions_search_path (ADR 0001,
 * amendment "Trigger functions name what they read"): a function without a path of its own resolves
 * names through its caller's, whose temporary schema comes first. Its body reads no relation today, but
 * every function of the schema is held to the rule, and the readiness row `function-search-path` fails
 * one without it. The schema generator neither writes nor compares a SET clause (MikroORM's Routine has
 * none), so `db:check` stays clean and a later `create or replace` of it must repeat the clause (the
 * row and trigger-search-path.test.ts fail otherwise). ALTER, not CREATE OR REPLACE: the body is unchanged.
 */
export class Migration20261206105700_durable_expect_search_path extends Migration {

  override name = 'Migration20261206105700_durable_expect_search_path';

  override up(): void | Promise<void> {
    this.addSql(`alter function "durable_expect"(boolean, text) set search_path = pg_catalog, public, pg_temp;`);
  }

  override down(): void | Promise<void> {
    this.addSql(`alter function "durable_expect"(boolean, text) reset search_path;`);
  }

}
