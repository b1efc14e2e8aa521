/**
 * A retry starts work again, so it is admitted like a submission: a tenant at its cap of runs in
 * flight (MAX_RUNS_IN_FLIGHT_PER_TENANT) gets 429 for a retry too, nothing changes, and the same
 * Idempotency-Key retries the run once the tenant has room. Without it, retrying many failed runs at
 * once (after an outage) would put a tenant past its cap. Real stack: PostgreSQL as the application
 * role, Redis, the API in this process, the golden path in the production worker host (this process).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, CLASS_A_SUBMISSION, newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { barrier, startRunHost, wrappedGoldenPath } from '../helpers/run-host.ts';
import { PermanentError } from '../../src/platform/errors/app-error.ts';

let stack: TestStack;
beforeAll(async () => {
  stack = await startStack({ env: { MAX_RUNS_IN_FLIGHT_PER_TENANT: '1' } });
}, 120_000);
afterAll(async () => stack?.stop());

describe('a retry under the tenant\'s runs-in-flight cap', () => {
  it('answers 429 while the tenant is at its cap, changes nothing, and the same key retries the run once there is room', async () => {
    const tenant = newTenant();
    const token = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
    const failing = new Set<number>([2]);
    const hold = barrier();
    let holdNext = false;
    const host = startRunHost(
      stack,
      wrappedGoldenPath(stack, (step, seq) => async (input, ctx) => {
        if (seq === 1 && holdNext) {
          holdNext = false;
          hold.enter();
          await hold.released;
        }
        if (failing.has(seq)) throw new PermanentError('test_permanent', `step ${seq} refused for good (test)`);
        return step.run(input, ctx);
      }),
      `retry-admission-${randomUUID().slice(0, 8)}`,
    );
    const status = (id: string, statuses: string[]) =>
      waitFor(
        async () => {
          const r = await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token });
          return statuses.includes(r.json?.status) ? r.json : undefined;
        },
        { timeoutMs: 60_000, intervalMs: 50, what: `run ${id} to reach ${statuses.join('|')}` },
      );
    const submit = async () => {
      const r = await api(stack, 'POST', '/api/v1/golden-path/run', { token, body: CLASS_A_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
      expect(r.status, r.text).toBe(202);
      return r.json.run_id as string;
    };
    try {
      const failed = await submit();
      expect(await status(failed, ['failed', 'completed'])).toMatchObject({ status: 'failed' });
      failing.clear();

      // Another run of the tenant in flight (held in its first step): the tenant is at its cap of 1.
      holdNext = true;
      const held = await submit();
      await hold.inside;

      const key = randomUUID();
      const refused = await api(stack, 'POST', `/api/v1/golden-path/runs/${failed}/retry`, { token, headers: { 'Idempotency-Key': key } });
      expect(refused.status, refused.text).toBe(429);
      expect(refused.json.code).toBe('rate_limited');
      expect(Number(refused.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      const row = async () => (await stack.db.admin(`select status, retry_count from durable_runs where id = $1`, [failed])).rows[0];
      expect(await row()).toEqual({ status: 'failed', retry_count: 0 });

      hold.release();
      expect(await status(held, ['completed', 'failed'])).toMatchObject({ status: 'completed' });
      // The 429 stored no outcome under the key: the same key now retries the run.
      const retried = await api(stack, 'POST', `/api/v1/golden-path/runs/${failed}/retry`, { token, headers: { 'Idempotency-Key': key } });
      expect(retried.status, retried.text).toBe(200);
      expect(retried.headers.get('idempotent-replayed')).toBeNull();
      expect(await status(failed, ['completed', 'failed'])).toMatchObject({ status: 'completed' });
    } finally {
      hold.release();
      await host.stop();
    }
  });
});
