/**
 * SIGTERM to the real API (src/server.ts) while a request is in flight on a keep-alive connection,
 * as a load balancer or the platform's router holds them: the request completes, new connections
 * are refused, and the process exits 0 by itself — not at the hard deadline (grace + 10 s, status 1);
 * a request still arriving when the grace ends is cut off.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { spawnApi } from '../helpers/api-process.ts';
import { holdTable } from '../helpers/table-lock.ts';
import { waitFor, within } from '../helpers/poll.ts';
import { openSocket as connect } from '../helpers/raw-http.ts';

let stack: TestStack;
beforeAll(async () => {
  stack = await startStack({ api: false });
});
afterAll(async () => stack?.stop());

describe('SIGTERM to the API', () => {
  it('finishes the requests in flight on keep-alive connections, refuses new connections, closes idle ones, and exits 0', { timeout: 120_000 }, async () => {
    // The hard deadline is grace + 10 s: 30 s here, below the connections' keep-alive timeout (65 s),
    // and a grace long enough that the request in flight is never cut off by it.
    const apiProc = await spawnApi({ ...stack.env, WORKER_SHUTDOWN_GRACE: '20s' });
    const runs = await holdTable(stack.db.ownerUrl, 'durable_runs');
    try {
      const token = await stack.token({ tenantId: newTenant(), sub: 'drain' });
      // An idle keep-alive connection: it has been answered and waits for its next request.
      const idle = await connect(apiProc.baseUrl);
      idle.socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n');
      await waitFor(() => /\r\n\r\n/.test(idle.answer()), { what: 'the idle connection to be answered' });
      expect(idle.answer()).toMatch(/^HTTP\/1\.1 200/);
      expect(idle.answer()).toMatch(/connection: keep-alive/i);

      // A submission in flight on a keep-alive connection, held on the run table.
      const busy = await connect(apiProc.baseUrl);
      const body = JSON.stringify(SAMPLE_SUBMISSION);
      busy.socket.write(
        `POST /api/v1/golden-path/run HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nAuthorization: Bearer ${token}\r\nContent-Type: application/json\r\n` +
          `Idempotency-Key: ${randomUUID()}\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
      );
      await runs.waiting('the submission to wait on the run table');

      apiProc.proc.kill('SIGTERM');
      await waitFor(() => apiProc.lines().some((l) => l.msg === 'shutting down'), { what: 'the API to start shutting down' });
      // New connections are refused; the idle one is closed.
      await expect(connect(apiProc.baseUrl)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
      await within(idle.closed, 'the idle connection to be closed');

      // The request in flight completes, and its connection is closed after its answer.
      await runs.release();
      await within(busy.closed, 'the connection of the request in flight to be closed after its answer');
      expect(busy.answer()).toMatch(/^HTTP\/1\.1 202/);
      expect(busy.answer()).toMatch(/connection: close/i);

      // Past the hard deadline (30 s), so a process that did not stop by itself is seen exiting 1, not a timeout here.
      expect(await within(apiProc.exited, 'the API to exit', 60_000)).toBe(0);
      expect(apiProc.lines().map((l) => l.msg)).toContain('shut down cleanly');
    } finally {
      await runs.close();
      await apiProc.stop('SIGKILL');
    }
  });

  /**
   * Behind a load balancer that routes by readiness (Kubernetes, an ALB), requests keep arriving until
   * the instance is deregistered, which follows a failing /readyz: API_SHUTDOWN_DELAY keeps the API
   * serving — new connections too — with /readyz answering 503, and only then drains as above.
   */
  it('with API_SHUTDOWN_DELAY, answers /readyz 503 and keeps serving new connections until the delay ends', { timeout: 120_000 }, async () => {
    // Long enough that it never ends within this test: what the delay does is watched, not timed.
    const apiProc = await spawnApi({ ...stack.env, API_SHUTDOWN_DELAY: '5m' });
    try {
      const token = await stack.token({ tenantId: newTenant(), sub: 'delayed' });
      expect((await fetch(`${apiProc.baseUrl}/readyz`)).status).toBe(200);
      apiProc.proc.kill('SIGTERM');
      await waitFor(() => apiProc.lines().some((l) => l.msg === 'shutting down'), { what: 'the API to start shutting down' });
      const notReady = await waitFor(async () => {
        const res = await fetch(`${apiProc.baseUrl}/readyz`);
        return res.status === 503 ? res : undefined;
      }, { what: '/readyz to answer 503' });
      expect(notReady.headers.get('content-type')).toMatch(/application\/problem\+json/);
      expect(await notReady.json()).toMatchObject({ code: 'not_ready', checks: { shutdown: { ok: false } } });
      // Still serving, on new connections: liveness, and a tenant's request.
      expect((await fetch(`${apiProc.baseUrl}/healthz`, { headers: { connection: 'close' } })).status).toBe(200);
      const list = await fetch(`${apiProc.baseUrl}/api/v1/golden-path/runs`, { headers: { authorization: `Bearer ${token}`, connection: 'close' } });
      expect(list.status).toBe(200);
      expect(apiProc.lines().find((l) => l.msg?.startsWith('not ready'))).toMatchObject({ delay_ms: 300_000 });
      expect(apiProc.proc.exitCode).toBeNull();
    } finally {
      await apiProc.stop('SIGKILL');
    }
  });

  it('with API_SHUTDOWN_DELAY, drains and exits 0 once the delay ended', { timeout: 120_000 }, async () => {
    const apiProc = await spawnApi({ ...stack.env, API_SHUTDOWN_DELAY: '1s', WORKER_SHUTDOWN_GRACE: '1s' });
    try {
      apiProc.proc.kill('SIGTERM');
      expect(await within(apiProc.exited, 'the API to exit', 60_000)).toBe(0);
      const msgs = apiProc.lines().map((l) => l.msg as string);
      const at = (prefix: string) => msgs.findIndex((m) => m?.startsWith(prefix));
      // In that order: the signal, the delay (not ready, serving), the drain, the end.
      expect([at('shutting down'), at('not ready'), at('draining'), at('shut down cleanly')].every((i, n, all) => i >= 0 && (n === 0 || i > all[n - 1]!))).toBe(true);
    } finally {
      await apiProc.stop('SIGKILL');
    }
  });

  it('cuts off, at the grace, a request still arriving (a client trickling its body) and exits 0', { timeout: 120_000 }, async () => {
    // API_REQUEST_TIMEOUT (60 s here) would let the body trickle in long past the hard deadline (grace + 10 s).
    const apiProc = await spawnApi({ ...stack.env, WORKER_SHUTDOWN_GRACE: '1s', API_REQUEST_TIMEOUT: '60s', API_MAX_INFLIGHT: '1', API_MAX_INFLIGHT_PER_TENANT: '0' });
    try {
      const token = await stack.token({ tenantId: newTenant(), sub: 'trickler' });
      const slow = await connect(apiProc.baseUrl);
      slow.socket.write(
        `POST /api/v1/golden-path/run HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nContent-Type: application/json\r\n` +
          `Idempotency-Key: ${randomUUID()}\r\nContent-Length: 1000\r\n\r\n{`,
      );
      // In flight (Express has it): with its one slot taken, another request is shed.
      await waitFor(async () => (await fetch(`${apiProc.baseUrl}/api/v1/golden-path/runs`, { headers: { authorization: `Bearer ${token}` } })).status === 503, {
        what: 'the trickled request to take the slot',
      });
      apiProc.proc.kill('SIGTERM');
      await within(slow.closed, 'the trickled request to be cut off');
      expect(await within(apiProc.exited, 'the API to exit')).toBe(0);
      expect(apiProc.lines().map((l) => l.msg)).toContain('shut down cleanly');
    } finally {
      await apiProc.stop('SIGKILL');
    }
  });
});
