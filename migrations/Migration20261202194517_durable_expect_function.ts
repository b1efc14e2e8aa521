import { Migration } from '@mikro-orm/migrations';

/**
 * `durable_expect(ok, what)` (src/platform/db/routines.ts, generated from its declaration): lets the
 * checkpoint of a run's first step, run without reading the run, refuse to commit when the stored
 * run is not as the job carried it (ADR 0004).
 */
export class Migration20261202194517_durable_expect_function extends Migration {

  override name = 'Migration20261202194517_durable_expect_function';

  override up(): void | Promise<void> {
    this.addSql(`create or replace function "durable_expect"("ok" boolean, "what" text) returns boolean security invoker volatile language plpgsql as \$\$ begin
  if ok is not true then
    raise exception using errcode = 'DX001', message = what;   end if;   return true; end \$\$;`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop function if exists "durable_expect"(boolean, text);`);
  }

}
