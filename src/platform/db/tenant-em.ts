import type { EntityManager, MikroORM } from '@mikro-orm/postgresql';
import { SYSTEM_ROLE, TENANT_SETTING } from './tenant-owned.ts';

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * The one way tenant data is opened: a fresh entity manager whose every transaction begins with
 * `set_config('app.tenant_id', <tenant>, true)`. Used by the API (per request) and workers (per job).
 * Row-level security in PostgreSQL then decides what the manager can see and write.
 */
export function tenantEm(orm: MikroORM, tenantId: string): EntityManager {
  if (!UUID_RE.test(tenantId)) throw new TypeError('tenantEm: tenant id must be a UUID');
  return orm.em.fork({ clear: true, useContext: false, session: { variables: { [TENANT_SETTING]: tenantId.toLowerCase() } } });
}

/**
 * A narrowly privileged system context: `SET LOCAL ROLE <role>` for cross-tenant maintenance
 * (the recovery sweeper, expiry of idempotency keys). What the role may see is fixed in the
 * database by column grants and policies; see docs/adr/0003-recovery-sweeper-cross-tenant-read.md.
 */
export function systemEm(orm: MikroORM): EntityManager {
  return orm.em.fork({ clear: true, useContext: false, session: { role: SYSTEM_ROLE } });
}
