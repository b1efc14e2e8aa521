import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { backendPid, blockedByAtLeast, countBlockedBy } from '../helpers/lock-graph.ts';
import { waitFor, within } from '../helpers/poll.ts';
import { refusedOf } from '../helpers/metrics.ts';
import { spawnApi } from '../helpers/api-process.ts';

// A small pool: 4 connections, so a tenant's share is 2 (API_MAX_DB_CONNECTIONS_PER_TENANT unset: half
// the pool), and more concurrent submissions of one tenant (6) than the pool has connections.
const POOL = 4;
const SHARE = 2;
const NOISY = 6;

let stack: TestStack;
beforeAll(async () => {
  // '': unset, the default share (the test stack otherwise lets a tenant use its whole pool). The
  // submissions' waits for the held lock must outlast a slow CI run: a long statement timeout.
  stack = await startStack({ env: { DATABASE_POOL_MAX: String(POOL), API_MAX_DB_CONNECTIONS_PER_TENANT: '', API_MAX_INFLIGHT_PER_TENANT: '16', DATABASE_STATEMENT_TIMEOUT: '120s' } });
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

describe('a request whose client hangs up while it waits for a place', () => {
  it('leaves the wait at once: it frees its in-flight slots, and is neither answered nor counted as refused', async () => {
    // The real server, a share of one place and two in-flight slots per tenant: the submission holding
    // the place and one request waiting for it fill the tenant's slots. The submission's wait for the
    // lock must outlast a slow CI run: a long statement timeout.
    const api1 = await spawnApi({ ...stack.env, API_MAX_DB_CONNECTIONS_PER_TENANT: '1', API_MAX_INFLIGHT_PER_TENANT: '2', DATABASE_STATEMENT_TIMEOUT: '120s' });
    const tenant = newTenant();
    const token = await stack.token({ tenantId: tenant, sub: 'hangs-up-waiting' });
    const runs = (query = '') => fetch(`${api1.baseUrl}/api/v1/golden-path/runs${query}`, { headers: { authorization: `Bearer ${token}` } });
    const holder = new pg.Client({ connectionString: stack.db.ownerUrl });
    await holder.connect();
    const query = (sql: string, params?: unknown[]) => holder.query(sql, params);
    let held = false;
    let first: Promise<Response> | undefined;
    try {
      await holder.query(`select pg_advisory_lock(hashtextextended('dealix:admission:' || $1, 0))`, [tenant]);
      held = true;
      const pid = await backendPid(query);
      first = fetch(`${api1.baseUrl}/api/v1/golden-path/run`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'idempotency-key': randomUUID() },
        body: JSON.stringify(SAMPLE_SUBMISSION),
      });
      await blockedByAtLeast(query, pid, 1, 'the submission holding the place to wait for the admission lock', { timeoutMs: 60_000 });

      // A read of the tenant waits for the place. A probe with a query the route refuses (400, before the
      // share) is answered 429 once the waiting read holds the tenant's second slot: from the slot to the
      // wait there is no await, so it then waits. A read that came after a probe took the slot for a
      // moment is refused 429 itself, and sent again.
      let abort!: AbortController;
      let waiting!: Promise<unknown>;
      let answered = false;
      const read = () => {
        abort = new AbortController();
        answered = false;
        const sent = fetch(`${api1.baseUrl}/api/v1/golden-path/runs`, { headers: { authorization: `Bearer ${token}` }, signal: abort.signal }).catch(() => undefined);
        void sent.then(() => sent === waiting && (answered = true));
        waiting = sent;
      };
      read();
      await waitFor(
        async () => {
          if (answered) read();
          const probe = await runs('?unknown=1');
          await probe.arrayBuffer();
          return probe.status === 429 && !answered;
        },
        { timeoutMs: 30_000, what: 'a read of the tenant to wait for its place' },
      );
      abort.abort();
      await waiting;
      await waitFor(() => api1.lines().some((l) => l.msg === 'request aborted' && l.req?.method === 'GET'), { timeoutMs: 30_000, what: 'the API to see the hang-up' });

      // Its slot is free: another read is let in (not 429) and waits for the place in turn; the place
      // still held, it is answered 503 — and it alone is counted as refused, not the read that left.
      const next = await runs();
      expect(next.status, await next.text()).toBe(503);
      const metrics = await (await fetch(`${api1.baseUrl}/metrics`)).text();
      expect(refusedOf(metrics, 'tenant_db_connections', 'GET /api/v1/golden-path/runs')).toBe(1);
    } finally {
      if (held) await holder.query(`select pg_advisory_unlock(hashtextextended('dealix:admission:' || $1, 0))`, [tenant]).catch(() => {});
      await holder.end();
      if (first) await first.catch(() => undefined);
      await api1.stop();
    }
    // The submission that held the place went through.
    expect((await first!).status).toBe(202);
  });
});
