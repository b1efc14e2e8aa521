import { randomUUID } from 'node:crypto';
import { expect } from 'vitest';
import pg from 'pg';
import { api, newTenant, SAMPLE_SUBMISSION, type TestStack } from './stack.ts';
import { setPolicy } from './policy.ts';
import { backendPid, blockedBy } from './lock-graph.ts';

/**
 * Submits a class B run of a new tenant whose SLAs are 1 s, with step 3's request held back: its insert
 * travels with the step's checkpoint and commit, after the SLA timer is scheduled, and waits behind a
 * SHARE lock on approval_requests that `holder` takes (inserts wait; the timer's locking read of the
 * request does not). Resolves once step 3's commit waits for the lock. The caller commits `holder` to let
 * the request in, and rolls it back and ends it in its `finally` (also when this throws: `holder` is
 * ended here then).
 */
export async function submitWithRequestHeld(stack: TestStack, deadline: { timeoutMs: number; intervalMs: number }): Promise<{ runId: string; submitter: string; holder: pg.Client }> {
  const tenant = newTenant();
  const policy = { class_a_max_cost: 50000, class_a_max_payback_months: 6, class_c_min_cost: 250000, class_c_min_payback_months: 24, sla_b_seconds: 1, sla_c_seconds: 1 };
  expect((await setPolicy(stack, tenant, policy)).status).toBe(200); // shorter SLAs only: a tightening, applied at once
  const submitter = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
  const holder = new pg.Client({ connectionString: stack.env.MIGRATION_DATABASE_URL! });
  await holder.connect();
  try {
    await holder.query('begin');
    await holder.query('lock table approval_requests in share mode');
    const holderPid = await backendPid((sql, params) => holder.query(sql, params));
    const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token: submitter, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
    expect(res.status, res.text).toBe(202);
    await blockedBy((sql, params) => holder.query(sql, params), holderPid, "step 3's commit to wait for the lock", deadline);
    return { runId: res.json.run_id as string, submitter, holder };
  } catch (e) {
    await holder.query('rollback').catch(() => {});
    await holder.end();
    throw e;
  }
}
