import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, CLASS_A_SUBMISSION, newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { refusedOf } from '../helpers/metrics.ts';
import { holdTable } from '../helpers/table-lock.ts';

/**
 * Per-tenant abuse limits on submissions: a rate per minute and a cap on runs in flight. Both answer
 * 429 problem+json with Retry-After, neither is stored as the key's idempotent outcome (the same key
 * succeeds once the limit clears), and one tenant's limit never touches another tenant.
 */

const RUN = '/api/v1/golden-path/run';

async function submit(stack: TestStack, token: string, key = randomUUID()) {
  return api(stack, 'POST', RUN, { token, body: CLASS_A_SUBMISSION, headers: { 'Idempotency-Key': key } });
}

/** How many submissions /metrics counts as refused for `reason` (dealix_requests_refused_total). */
async function refused(stack: TestStack, reason: string, route = `POST ${RUN}`) {
  return refusedOf((await api(stack, 'GET', '/metrics')).text, reason, route);
}

async function storedKeys(stack: TestStack, key: string) {
  const { rows } = await stack.db.admin(`select status, response_status from idempotency_keys where idempotency_key = $1`, [key]);
  return rows;
}

function expect429(res: Awaited<ReturnType<typeof submit>>, maxRetryAfter: number) {
  expect(res.status).toBe(429);
  expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  expect(res.json).toMatchObject({ status: 429, code: 'rate_limited' });
  const retryAfter = Number(res.headers.get('retry-after'));
  expect(Number.isInteger(retryAfter)).toBe(true);
  expect(retryAfter).toBeGreaterThanOrEqual(1);
  expect(retryAfter).toBeLessThanOrEqual(maxRetryAfter);
  expect(res.headers.get('idempotent-replayed')).toBeNull();
}

describe('submission rate limit (RATE_LIMIT_PER_MINUTE)', () => {
  const LIMIT = 3;
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({ env: { RATE_LIMIT_PER_MINUTE: String(LIMIT), MAX_RUNS_IN_FLIGHT_PER_TENANT: '0' } });
  });
  afterAll(async () => stack?.stop());

  it('the request over the limit gets 429 with Retry-After; its key is not kept, and a retry after the window succeeds', { timeout: 150_000 }, async () => {
    const tenant = newTenant();
    const token = await stack.token({ tenantId: tenant, sub: 'burst' });
    // Start well inside a one-minute window, so the LIMIT accepted requests and the refused one share it.
    await waitFor(() => Date.now() % 60_000 < 45_000, { timeoutMs: 20_000, intervalMs: 200, what: 'the start of a rate window' });
    for (let i = 0; i < LIMIT; i++) expect((await submit(stack, token)).status).toBe(202);
    const key = randomUUID();
    const refusal = await submit(stack, token, key);
    expect429(refusal, 60);
    expect(await storedKeys(stack, key)).toEqual([]);
    // Counted for the operators, by reason and route (no tenant label: the access log names the tenant).
    expect(await refused(stack, 'rate_limit')).toBe(1);
    // The window's counter in Redis counts the accepted submissions: the refused one took its hit back
    // (else refused attempts would pile up past the limit, and the refund of a submission the server
    // failed would leave the counter still over it). It expires on its own shortly after its minute.
    const [counter] = await stack.redis.keys(`${stack.prefix}:ratelimit:${tenant}:*`);
    expect(await stack.redis.get(counter!)).toBe(String(LIMIT));
    const ttl = await stack.redis.pttl(counter!);
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(61_000);
    // Another tenant is not throttled by this one.
    const other = await stack.token({ tenantId: newTenant(), sub: 'calm' });
    expect((await submit(stack, other)).status).toBe(202);
    // The same key, retried after the window: a fresh 202, not a replayed 429.
    const accepted = await waitFor(async () => {
      const r = await submit(stack, token, key);
      if (r.status === 429) return undefined;
      return r;
    }, { timeoutMs: 90_000, intervalMs: 1000, what: 'the next rate window' });
    expect(accepted.status).toBe(202);
    expect(accepted.headers.get('idempotent-replayed')).toBeNull();
    expect(await storedKeys(stack, key)).toEqual([{ status: 'completed', response_status: 202 }]);
    const replay = await submit(stack, token, key);
    expect(replay.json.run_id).toBe(accepted.json.run_id);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
  });

  it('a replayed submission does not count against the rate, with the in-flight cap off too', async () => {
    // This stack runs with MAX_RUNS_IN_FLIGHT_PER_TENANT=0: no count statement carries the key's claim
    // ahead of the Redis counter, yet a client retrying a lost 202 must not spend the tenant's budget.
    const tenant = newTenant();
    const token = await stack.token({ tenantId: tenant, sub: 'retrier' });
    await waitFor(() => Date.now() % 60_000 < 45_000, { timeoutMs: 20_000, intervalMs: 200, what: 'the start of a rate window' });
    const key = randomUUID();
    const first = await submit(stack, token, key);
    expect(first.status).toBe(202);
    for (let i = 0; i < LIMIT + 1; i++) {
      const replay = await submit(stack, token, key);
      expect(replay.status).toBe(202);
      expect(replay.headers.get('idempotent-replayed')).toBe('true');
    }
    const [counter] = await stack.redis.keys(`${stack.prefix}:ratelimit:${tenant}:*`);
    expect(await stack.redis.get(counter!)).toBe('1');
    // The budget the replays did not spend is there for new submissions.
    for (let i = 1; i < LIMIT; i++) expect((await submit(stack, token)).status).toBe(202);
  });

  it('a retry its handler answers with a 4xx spends the budget; its replays spend none', async () => {
    // A retry of a run the tenant does not have is admitted, then its handler answers 404 (stored under
    // the key) and the transaction rolls back. The API processed it to a definitive answer: it counts,
    // or a storm of failing requests (each a transaction and a stored key) would go unbounded.
    const tenant = newTenant();
    const token = await stack.token({ tenantId: tenant, sub: 'wrong-id' });
    await waitFor(() => Date.now() % 60_000 < 45_000, { timeoutMs: 20_000, intervalMs: 200, what: 'the start of a rate window' });
    const retries = Array.from({ length: LIMIT }, () => ({ key: randomUUID(), run: randomUUID() }));
    const retry = (r: { key: string; run: string }) => api(stack, 'POST', `/api/v1/golden-path/runs/${r.run}/retry`, { token, headers: { 'Idempotency-Key': r.key } });
    for (const r of retries) expect((await retry(r)).status).toBe(404);
    // The stored 404s replay without spending anything more.
    for (const r of retries) {
      const replay = await retry(r);
      expect(replay.status).toBe(404);
      expect(replay.headers.get('idempotent-replayed')).toBe('true');
    }
    const [counter] = await stack.redis.keys(`${stack.prefix}:ratelimit:${tenant}:*`);
    expect(await stack.redis.get(counter!)).toBe(String(LIMIT));
    // The budget is spent: the next submission is refused.
    expect429(await submit(stack, token), 60);
  });

  it('a submission that fails server-side after admission gives its budget back; the same key then succeeds', async () => {
    const tenant = newTenant();
    const token = await stack.token({ tenantId: tenant, sub: 'unlucky' });
    await waitFor(() => Date.now() % 60_000 < 45_000, { timeoutMs: 20_000, intervalMs: 200, what: 'the start of a rate window' });
    expect((await submit(stack, token)).status).toBe(202);
    const [counter] = await stack.redis.keys(`${stack.prefix}:ratelimit:${tenant}:*`);
    expect(await stack.redis.get(counter!)).toBe('1');
    // The next submission is admitted (its hit counted), then its insert of the run waits on the held
    // table, and its backend is terminated there: a failure of the server, not an answer to the client.
    const runs = await holdTable(stack.db.ownerUrl, 'durable_runs');
    const key = randomUUID();
    try {
      const failing = submit(stack, token, key);
      await runs.waiting('the submission to wait on the run table');
      const { rows } = await stack.db.admin(
        `select pg_terminate_backend(l.pid) as terminated from pg_locks l join pg_class c on c.oid = l.relation
          where l.database = (select oid from pg_database where datname = current_database()) and c.relname = 'durable_runs' and not l.granted`,
      );
      expect(rows).toEqual([{ terminated: true }]);
      await runs.release();
      const res = await failing;
      expect(res.status, res.text).toBe(503);
      expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    } finally {
      await runs.close();
    }
    expect(await stack.redis.get(counter!)).toBe('1');
    expect(await storedKeys(stack, key)).toEqual([]);
    // The budget given back is there for the same key's retry: LIMIT - 1 more are accepted, then 429.
    expect((await submit(stack, token, key)).status).toBe(202);
    for (let i = 2; i < LIMIT; i++) expect((await submit(stack, token)).status).toBe(202);
    expect429(await submit(stack, token), 60);
  });
});

describe('runs in flight cap (MAX_RUNS_IN_FLIGHT_PER_TENANT)', () => {
  const CAP = 2;
  let stack: TestStack;
  beforeAll(async () => {
    // No worker at first: accepted runs stay pending, i.e. in flight.
    // 24 submissions at once from one tenant: its share of the in-flight requests is off, so the runs cap decides.
    stack = await startStack({ env: { RATE_LIMIT_PER_MINUTE: '0', MAX_RUNS_IN_FLIGHT_PER_TENANT: String(CAP), API_MAX_INFLIGHT_PER_TENANT: '0' } });
  });
  afterAll(async () => stack?.stop());

  it('a submission over the cap gets 429; once runs finish the same key is accepted', async () => {
    const tenant = newTenant();
    const token = await stack.token({ tenantId: tenant, sub: 'busy' });
    for (let i = 0; i < CAP; i++) expect((await submit(stack, token)).status).toBe(202);
    const key = randomUUID();
    const refusal = await submit(stack, token, key);
    expect429(refusal, 60);
    expect(await storedKeys(stack, key)).toEqual([]);
    expect(await refused(stack, 'runs_in_flight')).toBe(1);
    const other = await stack.token({ tenantId: newTenant(), sub: 'idle' });
    expect((await submit(stack, other)).status).toBe(202);

    await stack.spawnWorker();
    await waitFor(async () => {
      const { rows } = await stack.db.admin(`select count(*)::int as n from durable_runs where tenant_id = $1 and status in ('pending', 'running')`, [tenant]);
      return rows[0].n === 0;
    }, { timeoutMs: 60_000, what: 'the accepted runs to finish' });
    const accepted = await submit(stack, token, key);
    expect(accepted.status).toBe(202);
    expect(accepted.headers.get('idempotent-replayed')).toBeNull();
  });

  it('concurrent submissions cannot slip past the cap', async () => {
    const tenant = newTenant();
    const token = await stack.token({ tenantId: tenant, sub: 'racer' });
    // No worker: every accepted run stays pending, so the cap is the only thing deciding.
    for (const w of stack.workers) w.kill();
    await Promise.all(stack.workers.map((w) => w.exited));
    const results = await Promise.all(Array.from({ length: 24 }, () => submit(stack, token)));
    const statuses = results.map((r) => r.status).sort();
    expect(statuses.filter((s) => s === 202)).toHaveLength(CAP);
    expect(statuses.filter((s) => s === 429)).toHaveLength(24 - CAP);
    const { rows } = await stack.db.admin(`select count(*)::int as n from durable_runs where tenant_id = $1`, [tenant]);
    expect(rows[0].n).toBe(CAP);
  });
});

describe('a runs-in-flight cap past PostgreSQL integer range', () => {
  let stack: TestStack;
  afterAll(async () => stack?.stop());

  it.each(['2147483647', '3000000000'])('MAX_RUNS_IN_FLIGHT_PER_TENANT=%s (a large value meaning "practically none") admits submissions, not a 500 for each', async (cap) => {
    await stack?.stop();
    stack = await startStack({ env: { RATE_LIMIT_PER_MINUTE: '0', MAX_RUNS_IN_FLIGHT_PER_TENANT: cap } });
    const token = await stack.token({ tenantId: newTenant(), sub: 'big-cap' });
    for (let i = 0; i < 2; i++) {
      const res = await submit(stack, token);
      expect(res.status, res.text).toBe(202);
    }
  });
});
