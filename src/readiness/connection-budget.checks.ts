import type { Redis } from 'ioredis';
import type { MikroORM } from '../platform/db/orm.ts';
import { BUDGET_ADVICE, connectionLimit, describeLimit, describeTally, livePools, tally, type BudgetTally, type ConnectionLimit } from '../platform/db/connection-budget.ts';
import { fail, pass, type ReadinessRow } from './readiness.types.ts';

/**
 * `connection-budget`: the database pools the API and worker processes alive now declare under
 * QUEUE_PREFIX (src/platform/db/connection-budget.ts), added up against what PostgreSQL lets the
 * application open (max_connections less its reserved slots). Over it is a FAIL whatever NODE_ENV says:
 * the pools open lazily, so such a deployment starts and passes its smoke tests, then fails with SQLSTATE
 * 53300 under load. It judges the processes running when the matrix runs: none (the CI gate's fresh
 * stack, a deployment not started yet) is a PASS that says so, not a verdict on the deployment to come.
 */
export function connectionBudgetRow(t: BudgetTally, limit: ConnectionLimit, prefix: string): ReadinessRow {
  const usable = `the ${limit.usable} PostgreSQL lets the application open (${describeLimit(limit)})`;
  if (!t.processes) {
    return pass('connection-budget', `no API or worker process declares its pool under QUEUE_PREFIX ${prefix} now: nothing to add up against ${usable}; run the matrix again with the deployment running`);
  }
  const declared = `${t.processes} process(es) pool up to ${t.total} connections (${describeTally(t)})`;
  if (t.total <= limit.usable) return pass('connection-budget', `${declared}, within ${usable}; other clients (migrations, this tool, psql) need room too`);
  return fail(
    'connection-budget',
    `${declared}, more than ${usable}: under load they fail with SQLSTATE 53300 "too many clients"; ${BUDGET_ADVICE}`,
  );
}

/** The row for the live system: the declarations alive in Redis now, PostgreSQL's limit as the application role reads it. */
export async function liveConnectionBudgetRow(orm: MikroORM, redis: Redis, prefix: string): Promise<ReadinessRow> {
  const [pools, limit] = await Promise.all([livePools(redis, prefix), connectionLimit(orm)]);
  return connectionBudgetRow(tally(pools), limit, prefix);
}
