import { createHash } from 'node:crypto';
import { adminQuery, type BenchDb } from '../lib/bench-db.ts';

/** Deterministic tenant ids shared by the seeded rows and the measured runs (md5 of a name, as a UUID). */
export function seedTenant(i: number): string {
  const h = createHash('md5').update(`bench-tenant-${i}`).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

export async function rowCount(db: BenchDb, table: string): Promise<number> {
  const r = await adminQuery(`select count(*)::int as n from ${table}`, [], db.name);
  return r.rows[0].n;
}

/**
 * Grows the runtime's tables to `target` rows each (durable_runs and durable_checkpoints, the two every
 * step reads and writes), spread over `tenants` tenants, as finished runs the sweeper never touches.
 * Written by the superuser with generate_series; indexes are maintained as in production; then ANALYZE.
 */
export async function seedRows(db: BenchDb, target: number, tenants: number): Promise<number> {
  const have = await rowCount(db, 'durable_runs');
  const add = target - have;
  const batch = 100_000;
  for (let from = 0; from < add; from += batch) {
    const n = Math.min(batch, add - from);
    await adminQuery(
      `with seeded as (
         insert into durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, output, correlation_id,
                                   sequence_num, step_count, created_at, updated_at, completed_at)
         select gen_random_uuid(), md5('bench-tenant-' || (g % $2))::uuid, 'golden-path', 1, md5('seed-a-' || g || '-' || $3) || md5('seed-b-' || g),
                'completed', 'seed', '{"seeded": true}'::jsonb, '{"seeded": true}'::jsonb, 'seed-' || g, 4, 4,
                now() - interval '1 day', now() - interval '1 day', now() - interval '1 day'
           from generate_series(1, $1) g
         returning id, tenant_id)
       insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, output, attempt, created_at, updated_at, completed_at)
       select gen_random_uuid(), tenant_id, id, 4, 'evidence-pack', 'completed', '{"seeded": true}'::jsonb, 1,
              now() - interval '1 day', now() - interval '1 day', now() - interval '1 day'
         from seeded`,
      [n, tenants, `${have}-${from}`],
      db.name,
    );
  }
  await adminQuery('vacuum analyze durable_runs', [], db.name);
  await adminQuery('vacuum analyze durable_checkpoints', [], db.name);
  return rowCount(db, 'durable_runs');
}
