import { Routine } from '@mikro-orm/core';

/**
 * `durable_expect(ok, what)`: raises SQLSTATE DX001 with `what` unless `ok` is true; returns true.
 * Lets one statement refuse to commit what it wrote when a condition it checked in the same
 * statement does not hold: a run job's first step runs from what its job carries, without reading
 * the run, and the statement that writes its checkpoint checks that the stored run is still as the
 * job carried it (DurableRuntime.checkpoint's `expect`, ADR 0004). SECURITY INVOKER, reads nothing.
 * Declared here so that the schema generator and `db:check` know it (MikroORM stored routines).
 *
 * It runs with `search_path = pg_catalog, public, pg_temp` (FUNCTION_SEARCH_PATH in catalog.ts), as every
 * function of the schema must (the readiness row `function-search-path`; ADR 0001, "Trigger functions name
 * what they read"). A Routine has no SET clause: the generator neither writes nor compares it, and routine
 * changes are migrated by hand (migrate.ts, createMigration), so the clause lives in the migrations
 * (Migration20261206105700_durable_expect_search_path). A migration that changes this declaration must
 * write its `create or replace function` with `set search_path = pg_catalog, public, pg_temp` (a CREATE OR
 * REPLACE without it resets it).
 */
export const DURABLE_EXPECT = new Routine({
  name: 'durable_expect',
  type: 'function',
  language: 'plpgsql',
  security: 'invoker',
  deterministic: false,
  params: {
    ok: { type: 'boolean' },
    what: { type: 'text' },
  },
  returns: { runtimeType: 'boolean', columnType: 'boolean' },
  body: `begin
  if ok is not true then
    raise exception using errcode = 'DX001', message = what;
  end if;
  return true;
end`,
});

/** Every stored routine of the schema: given to every ORM, so the schema generator compares them too. */
export const routines = [DURABLE_EXPECT];
