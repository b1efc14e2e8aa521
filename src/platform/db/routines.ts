import { Routine } from '@mikro-orm/core';

/**
 * `durable_expect(ok, what)`: raises SQLSTATE DX001 with `what` unless `ok` is true; returns true.
 * Lets one statement refuse to commit what it wrote when a condition it checked in the same
 * statement does not hold: a run job's first step runs from what its job carries, without reading
 * the run, and the statement that writes its checkpoint checks that the stored run is still as the
 * job carried it (DurableRuntime.checkpoint's `expect`, ADR 0004). SECURITY INVOKER, reads nothing.
 * Declared here so that the schema generator and `db:check` know it (MikroORM stored routines).
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
