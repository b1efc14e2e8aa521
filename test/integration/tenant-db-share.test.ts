import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { backendPid, blockedByAtLeast, countBlockedBy } from '../helpers/lock-graph.ts';
import { waitFor, within } from '../helpers/poll.ts';
import { refusedOf } from '../helpers/metrics.ts';

// A small pool: 4 connections, so a tenant's share is 2 (API_MAX_DB_CONNECTIONS_PER_TENANT unset: half
// the pool), and more concurrent submissions of one tenant (6) than the pool has connections.
const POOL = 4;
const SHARE = 2;
const NOISY = 6;

let stack: TestStack;
beforeAll(async () => {
  // '': unset, the default share (the test stack otherwise lets a tenant use its whole pool).
  stack = await startStack({ env: { DATABASE_POOL_MAX: String(POOL), API_MAX_DB_CONNECTIONS_PER_TENANT: '', API_MAX_INFLIGHT_PER_TENANT: '16' } });
});
afterAll(async () => stack?.stop());

const submit = (token: string, key: string) => api(stack, 'POST', '/api/v1/golden-path/run', { token, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': key } });

describe("a tenant's share of the API's database connections (ADR 0012, amendment)", () => {
  it("one tenant's submissions piled on its own admission lock leave the other tenants connections: their reads and submissions are served meanwhile", async () => {
    const noisy = newTenant();
    const quiet = newTenant();
    const noisyToken = await stack.token({ tenantId: noisy, sub: 'noisy' });
    const quietToken = await stack.token({ tenantId: quiet, sub: 'quiet' });
    const first = await submit(quietToken, randomUUID());
    expect(first.status, first.text).toBe(202);
    const quietRun = first.json.run_id as string;

    // The test holds the noisy tenant's admission lock (admission.ts) on a connection of its own: every
    // submission of that tenant waits for it inside its transaction, holding a pooled connection.
    const holder = new pg.Client({ connectionString: stack.db.ownerUrl });
    await holder.connect();
    const query = (sql: string, params?: unknown[]) => holder.query(sql, params);
    let held = false;
    const keys = Array.from({ length: NOISY }, () => randomUUID());
    type Answer = Awaited<ReturnType<typeof submit>>;
    const answered: Array<Answer | undefined> = [];
    let burst: Promise<Answer[]> | undefined;
    try {
      await holder.query(`select pg_advisory_lock(hashtextextended('dealix:admission:' || $1, 0))`, [noisy]);
      held = true;
      const pid = await backendPid(query);
      burst = Promise.all(keys.map((key, i) => submit(noisyToken, key).then((a) => (answered[i] = a))));
      await blockedByAtLeast(query, pid, SHARE, "the noisy tenant's submissions to wait for its admission lock", { timeoutMs: 60_000 });

      // The other tenant is served while they wait: a read, and a submission (its own admission lock).
      const read = await within(api(stack, 'GET', `/api/v1/golden-path/runs/${quietRun}`, { token: quietToken }), "the quiet tenant's read", 60_000);
      expect(read.status, read.text).toBe(200);
      const second = await within(submit(quietToken, randomUUID()), "the quiet tenant's submission", 60_000);
      expect(second.status, second.text).toBe(202);
      // ...while the noisy tenant's submissions still wait for the lock, a share of the pool's connections.
      expect(await countBlockedBy(query, pid)).toBe(SHARE);

      // The noisy tenant's requests past its share wait in the process, not in the pool, and those that
      // cannot get a connection in time are answered as load shedding is: 503 problem+json, Retry-After.
      const shed = await waitFor(() => answered.find((a) => a?.status === 503), { timeoutMs: 60_000, what: "a submission past the tenant's share to be answered 503" });
      expect(shed.headers.get('content-type')).toContain('application/problem+json');
      expect(shed.json.code).toBe('service_unavailable');
      expect(Number(shed.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      // Counted as a refusal (dealix_requests_refused_total), by reason and route.
      expect(refusedOf((await api(stack, 'GET', '/metrics')).text, 'tenant_db_connections', 'POST /api/v1/golden-path/run')).toBeGreaterThanOrEqual(1);
      // None of them was answered otherwise, and those with a connection still wait for the lock.
      expect(answered.filter((a) => a !== undefined && a.status !== 503)).toEqual([]);
      expect(await countBlockedBy(query, pid)).toBe(SHARE);
    } finally {
      if (held) await holder.query(`select pg_advisory_unlock(hashtextextended('dealix:admission:' || $1, 0))`, [noisy]).catch(() => {});
      await holder.end();
    }

    // Released: the submissions that held a connection go through; those answered 503 stored nothing,
    // and their keys now run as first requests. Every key is one run.
    const answers = await within(burst!, "the noisy tenant's submissions to be answered", 60_000);
    for (const [i, a] of answers.entries()) {
      expect([202, 503], a.text).toContain(a.status);
      if (a.status === 503) {
        expect(a.json.code).toBe('service_unavailable');
        const again = await submit(noisyToken, keys[i]!);
        expect(again.status, again.text).toBe(202);
        expect(again.headers.get('idempotent-replayed')).toBeNull();
      }
    }
    expect(answers.filter((a) => a.status === 202).length).toBeGreaterThanOrEqual(SHARE);
    const { rows } = await stack.db.admin(`select count(*)::int as n from durable_runs where tenant_id = $1`, [noisy]);
    expect(rows[0].n).toBe(NOISY);
  });
});
