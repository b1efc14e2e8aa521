import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { api, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';

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
      expect((await api(stack, 'GET', '/healthz')).status).toBe(200);
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
