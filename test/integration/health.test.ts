import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';

/** On a redis-server of this test alone (never the shared one): it is stopped and started again here. */
let stack: TestStack;

beforeAll(async () => {
  stack = await startStack({ ownRedis: true });
});
afterAll(async () => stack?.stop());

describe('health and readiness', () => {
  it('is live and ready when PostgreSQL, Redis and the migrations are in order', async () => {
    expect((await api(stack, 'GET', '/healthz')).json).toEqual({ status: 'ok' });
    const ready = await api(stack, 'GET', '/readyz');
    expect(ready.status).toBe(200);
    expect(ready.json).toEqual({ status: 'ready', checks: { postgres: { ok: true }, redis: { ok: true }, migrations: { ok: true } } });
  });

  it('answers 503 naming Redis while Redis is stopped, stays live, and is ready again once Redis is back', async () => {
    await stack.ownRedis!.stopServer();
    const down = await waitFor(async () => {
      const r = await api(stack, 'GET', '/readyz');
      return r.status === 503 ? r : undefined;
    }, { timeoutMs: 30_000, what: 'readiness to fail' });
    expect(down.headers.get('content-type')).toContain('application/problem+json');
    expect(down.json).toMatchObject({ status: 503, code: 'not_ready', checks: { redis: { ok: false }, postgres: { ok: true } } });
    expect(down.json.detail).toBe('Not ready: redis (unreachable or too slow)');
    // Public: the driver's message (host, port, address) stays in the log.
    expect(down.text).not.toMatch(/127\.0\.0\.1|ECONNREFUSED|:\d{4,5}\b/);
    expect(down.headers.get('x-correlation-id')).toBeTruthy();
    expect((await api(stack, 'GET', '/healthz')).status).toBe(200);

    await stack.ownRedis!.startServer();
    await waitFor(async () => (await api(stack, 'GET', '/readyz')).status === 200, { timeoutMs: 30_000, what: 'readiness to recover' });
  });
});
