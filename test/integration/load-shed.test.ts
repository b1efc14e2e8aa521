import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { api, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { spawnApi } from '../helpers/api-process.ts';

let stack: TestStack;
beforeAll(async () => {
  stack = await startStack({ env: { API_MAX_INFLIGHT: '1' } });
});
afterAll(async () => stack?.stop());

describe('front-door load shedding', () => {
  it('past the in-flight limit answers 503 with Retry-After before any database work; probes are never shed', async () => {
    const tenant = newTenant();
    const token = await stack.token({ tenantId: tenant, sub: 'shed-user' });
    const blocker = new pg.Client({ connectionString: stack.db.ownerUrl });
    await blocker.connect();
    let committed = false;
    try {
      // Hold the run table so the first submission stays in flight.
      await blocker.query('begin');
      await blocker.query('lock table durable_runs in exclusive mode');
      const firstKey = randomUUID();
      const firstP = api(stack, 'POST', '/api/v1/golden-path/run', { token, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': firstKey } });
      await waitFor(
        async () => {
          const r = await blocker.query(`select count(*)::int as n from pg_locks l join pg_class c on c.oid = l.relation where c.relname = 'durable_runs' and not l.granted`);
          return r.rows[0].n > 0;
        },
        { timeoutMs: 30_000, what: 'the first submission to block on the run table' },
      );
      const shedKey = randomUUID();
      const shed = await api(stack, 'POST', '/api/v1/golden-path/run', { token, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': shedKey } });
      expect(shed.status).toBe(503);
      expect(shed.headers.get('content-type')).toContain('application/problem+json');
      expect(Number(shed.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      // Every spelling Express routes to a probe is exempt (a probe configured with a trailing slash too).
      for (const probe of ['/healthz', '/healthz/', '/HEALTHZ', '/Metrics/']) expect((await api(stack, 'GET', probe)).status, probe).toBe(200);
      await blocker.query('commit');
      committed = true;
      const first = await firstP;
      expect(first.status, first.text).toBe(202);
      // The shed request stored nothing: the same key now runs as a first request.
      const again = await api(stack, 'POST', '/api/v1/golden-path/run', { token, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': shedKey } });
      expect(again.status, again.text).toBe(202);
      expect(again.headers.get('idempotent-replayed')).toBeNull();
    } finally {
      // Only a transaction the test left open: a rollback after the commit makes the server log a warning.
      if (!committed) await blocker.query('rollback').catch(() => {});
      await blocker.end();
    }
  });
});

describe('a client that trickles its request body', () => {
  it('holds its in-flight slot only until API_REQUEST_TIMEOUT: then 408, and the next request is served', async () => {
    // The real server (src/server.ts), where the timeouts are set, with one slot and a 2 s budget.
    const api1 = await spawnApi({ ...stack.env, API_MAX_INFLIGHT: '1', API_REQUEST_TIMEOUT: '2s' });
    try {
      const token = await stack.token({ tenantId: newTenant(), sub: 'slow-client' });
      const url = new URL(api1.baseUrl);
      const socket = net.connect(Number(url.port), url.hostname);
      let answer = '';
      socket.on('data', (d) => (answer += d));
      const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
      await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
      // Headers promising 1,000 bytes, then one byte, then nothing.
      socket.write(`POST /api/v1/golden-path/run HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nContent-Type: application/json\r\nIdempotency-Key: ${randomUUID()}\r\nContent-Length: 1000\r\n\r\n{`);
      // While it trickles, its slot is taken: another request is shed.
      await waitFor(async () => (await fetch(`${api1.baseUrl}/api/v1/golden-path/runs`, { headers: { authorization: `Bearer ${token}` } })).status === 503, { timeoutMs: 10_000, what: 'the slot to be taken' });
      await closed;
      expect(answer).toMatch(/^HTTP\/1\.1 408/);
      // The slot is released when the server has closed the request (just after the client saw it).
      await waitFor(async () => (await fetch(`${api1.baseUrl}/api/v1/golden-path/runs`, { headers: { authorization: `Bearer ${token}` } })).status === 200, {
        timeoutMs: 10_000,
        what: 'the slot to be free again',
      });
    } finally {
      await api1.stop();
    }
  });
});
