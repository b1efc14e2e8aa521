import type { Redis } from 'ioredis';
import type { MikroORM } from '@mikro-orm/postgresql';
import { systemEm } from '../db/tenant-em.ts';
import { tenantLimitsKey } from '../durable/tenant-slots.ts';

/**
 * The Redis copy of the tenants' active-run overrides (ADR 0014): the hash `<prefix>:tenant-limits`
 * (field: tenant id, value: its cap), read by the slot scripts (tenant-slots.ts) inside the command a
 * run job already sends. PostgreSQL (`tenant_limits`) holds the truth; the operator API writes this
 * copy after its transaction commits, and every worker re-seeds it from PostgreSQL when it starts, when
 * the sweeper finds Redis flushed or replaced, and every SWEEPER_INTERVAL (a copy that missed a change heals).
 */
export async function publishActiveRunsOverride(redis: Redis, prefix: string, tenantId: string, maxActiveRuns: number | null): Promise<void> {
  if (maxActiveRuns === null) await redis.hdel(tenantLimitsKey(prefix), tenantId);
  else await redis.hset(tenantLimitsKey(prefix), tenantId, String(maxActiveRuns));
}

/**
 * Replaces the Redis copy with every tenant's active-run override in PostgreSQL, read as the system
 * role (its SELECT policy and column grants: the tenant id and the cap, nothing else). One MULTI: the
 * scripts never see the hash half written. Returns how many overrides it holds.
 */
export async function seedActiveRunOverrides(orm: MikroORM, redis: Redis, prefix: string): Promise<number> {
  const rows = await systemEm(orm).transactional((em) =>
    em.execute<{ tenant_id: string; max_active_runs: number }[]>(`select tenant_id, max_active_runs from tenant_limits where max_active_runs is not null`),
  );
  const key = tenantLimitsKey(prefix);
  const tx = redis.multi().del(key);
  if (rows.length) tx.hset(key, Object.fromEntries(rows.map((r) => [r.tenant_id, String(r.max_active_runs)])));
  await tx.exec();
  return rows.length;
}
