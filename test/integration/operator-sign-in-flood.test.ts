import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor, within } from '../helpers/poll.ts';
import { spawnApi, type ApiProcess } from '../helpers/api-process.ts';
import { openSocket, type RawConnection } from '../helpers/raw-http.ts';
import { SIGN_IN_MAX_IN_FLIGHT } from '../../src/platform/http/admin-auth.middleware.ts';

/**
 * The dashboard's sign-in exchange (`POST /admin/queues/sign-in`, ADR 0017) reads its form body before
 * any token is checked: it is the one request anyone without credentials can keep in flight by sending
 * its body slowly. Counted against API_MAX_INFLIGHT, a handful of such connections shed every tenant
 * (503) until API_REQUEST_TIMEOUT. It has a small pool of its own and a short deadline for its body instead.
 */
let stack: TestStack;
let api1: ApiProcess;
beforeAll(async () => {
  stack = await startStack();
  // Two places for the whole process, and a request timeout far past any poll below: a 408 the
  // trickled sign-ins get can only be the sign-in's own deadline.
  api1 = await spawnApi({ ...stack.env, API_MAX_INFLIGHT: '2', API_MAX_INFLIGHT_PER_TENANT: '0', API_REQUEST_TIMEOUT: '300s' });
});
afterAll(async () => {
  await api1?.stop();
  await stack?.stop();
});

/** A sign-in POST as a tool without credentials sends it: the dashboard's own Origin (which guardBrowser wants), 10,000 bytes promised, one sent. */
async function trickledSignIn(baseUrl: string): Promise<RawConnection> {
  const host = new URL(baseUrl).host;
  const conn = await openSocket(baseUrl);
  conn.socket.write(
    `POST /admin/queues/sign-in HTTP/1.1\r\nHost: ${host}\r\nOrigin: http://${host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 10000\r\n\r\nt`,
  );
  return conn;
}

/** A sign-in whose form arrives whole (a token that is no JWT): its status, 401 when it is checked, 503 when it is shed. */
async function wholeSignIn(): Promise<number> {
  const r = await fetch(`${api1.baseUrl}/admin/queues/sign-in`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', origin: api1.baseUrl },
    body: 'token=not-a-jwt',
  });
  await r.arrayBuffer();
  return r.status;
}

describe('trickled dashboard sign-ins', () => {
  it('take no place of the API: a tenant is served while they are held, and they end with 408 at the sign-in deadline', async () => {
    const token = await stack.token({ tenantId: newTenant(), sub: 'tenant-user' });
    const list = () => fetch(`${api1.baseUrl}/api/v1/golden-path/runs`, { headers: { authorization: `Bearer ${token}` } });
    const opened: RawConnection[] = [];
    try {
      // Trickled sign-ins are opened one by one until a whole sign-in form is refused at once (503): then
      // every place a sign-in may take is held by the trickled ones still unanswered (an answered one
      // holds none). The tenant's GET is made while they are, and counts only if none of them was answered
      // meanwhile (else, under load, the whole attempt is made again).
      const { status, held } = await waitFor(
        async () => {
          for (const c of opened.splice(0)) c.socket.destroy();
          for (let i = 0; i < 32; i++) {
            opened.push(await trickledSignIn(api1.baseUrl));
            if ((await wholeSignIn()) !== 503) continue;
            const waiting = opened.filter((c) => !c.answer());
            const r = await list();
            const body = await r.text();
            if (waiting.some((c) => c.answer())) return undefined;
            return { status: r.status, body, held: waiting };
          }
          return undefined;
        },
        { timeoutMs: 60_000, what: 'trickled sign-ins holding every place they may take' },
      );
      expect(status, 'a tenant is served while trickled sign-ins are held').toBe(200);
      expect(held.length, 'the sign-ins held their places before one was refused').toBeGreaterThanOrEqual(SIGN_IN_MAX_IN_FLIGHT);
      // Each held sign-in ends at its own deadline, well before API_REQUEST_TIMEOUT (300 s): 408, problem+json, naming the sign-in form.
      for (const c of held) {
        await within(c.closed, 'a trickled sign-in to be closed', 120_000);
        expect(c.answer()).toMatch(/^HTTP\/1\.1 408 /);
        const body = JSON.parse(c.answer().split('\r\n\r\n')[1] ?? '{}') as { code?: string; detail?: string };
        expect(body.code).toBe('request_timeout');
        expect(body.detail).toMatch(/sign-in form/);
      }
      // Their places are free again: a sign-in with a whole (if worthless) form is checked, not shed.
      await waitFor(async () => (await wholeSignIn()) === 401, { timeoutMs: 30_000, what: 'the sign-in places to be free' });
    } finally {
      for (const c of opened) c.socket.destroy();
    }
  });

  it('the dashboard reads no other body before authenticating: trickled writes without credentials are answered 401 at once', async () => {
    const host = new URL(api1.baseUrl).host;
    const conns: RawConnection[] = [];
    try {
      for (const line of ['POST /admin/queues/logout', 'PUT /admin/queues/api/queues/pause', 'PUT /admin/queues/api/queues/q/pause']) {
        const c = await openSocket(api1.baseUrl);
        conns.push(c);
        c.socket.write(`${line} HTTP/1.1\r\nHost: ${host}\r\nOrigin: http://${host}\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n{`);
        await waitFor(() => c.answer(), { timeoutMs: 30_000, what: `${line} to be answered while its body is owed` });
        // Sign-out without a session answers its page (nothing to end); the board's writes want credentials.
        expect(c.answer(), line).toMatch(line.startsWith('POST /admin/queues/logout') ? /^HTTP\/1\.1 200 / : /^HTTP\/1\.1 401 /);
      }
      // None holds a place: with the process's two places, tenants are served.
      const token = await stack.token({ tenantId: newTenant(), sub: 'tenant-user-2' });
      for (let i = 0; i < 3; i++) {
        const r = await fetch(`${api1.baseUrl}/api/v1/golden-path/runs`, { headers: { authorization: `Bearer ${token}` } });
        expect(r.status, await r.text()).toBe(200);
      }
    } finally {
      for (const c of conns) c.socket.destroy();
    }
  });
});
