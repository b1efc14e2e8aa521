import type net from 'node:net';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { spawnApi } from '../helpers/api-process.ts';
import { holdTable } from '../helpers/table-lock.ts';
import { openSocket, type RawConnection } from '../helpers/raw-http.ts';
import { refusedOf } from '../helpers/metrics.ts';

let stack: TestStack;
beforeAll(async () => {
  // One slot for the whole process; the tenant's share off (0), as a share of 1 slot or more would bound nothing
  // (the API refuses API_MAX_INFLIGHT_PER_TENANT ≥ API_MAX_INFLIGHT). The share's tests below set their own.
  stack = await startStack({ env: { API_MAX_INFLIGHT: '1', API_MAX_INFLIGHT_PER_TENANT: '0' } });
});
afterAll(async () => stack?.stop());

describe('front-door load shedding', () => {
  it('past the in-flight limit answers 503 with Retry-After before any database work; probes are never shed', async () => {
    const tenant = newTenant();
    const token = await stack.token({ tenantId: tenant, sub: 'shed-user' });
    // Hold the run table so the first submission stays in flight.
    const runs = await holdTable(stack.db.ownerUrl, 'durable_runs');
    try {
      const firstKey = randomUUID();
      const firstP = api(stack, 'POST', '/api/v1/golden-path/run', { token, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': firstKey } });
      await runs.waiting('the first submission to block on the run table');
      const shedKey = randomUUID();
      const shed = await api(stack, 'POST', '/api/v1/golden-path/run', { token, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': shedKey } });
      expect(shed.status).toBe(503);
      expect(shed.headers.get('content-type')).toContain('application/problem+json');
      expect(Number(shed.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      // Counted by reason and route template; /metrics itself is never shed.
      expect(refusedOf((await api(stack, 'GET', '/metrics')).text, 'load_shed', 'POST /api/v1/golden-path/run')).toBe(1);
      // Every spelling Express routes to a probe is exempt (a probe configured with a trailing slash too).
      for (const probe of ['/healthz', '/healthz/', '/HEALTHZ', '/Metrics/']) expect((await api(stack, 'GET', probe)).status, probe).toBe(200);
      await runs.release();
      const first = await firstP;
      expect(first.status, first.text).toBe(202);
      // The shed request stored nothing: the same key now runs as a first request.
      const again = await api(stack, 'POST', '/api/v1/golden-path/run', { token, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': shedKey } });
      expect(again.status, again.text).toBe(202);
      expect(again.headers.get('idempotent-replayed')).toBeNull();
    } finally {
      await runs.close();
    }
  });
});

describe('a client that trickles its request body', () => {
  it('holds its in-flight slot only until API_REQUEST_TIMEOUT: then 408, and the next request is served', async () => {
    // The real server (src/server.ts), where the timeouts are set, with one slot and a 2 s budget.
    const api1 = await spawnApi({ ...stack.env, API_MAX_INFLIGHT: '1', API_REQUEST_TIMEOUT: '2s' });
    try {
      const token = await stack.token({ tenantId: newTenant(), sub: 'slow-client' });
      const slow = await trickle(api1.baseUrl, token);
      // While it trickles, its slot is taken: another request is shed.
      await waitFor(async () => (await fetch(`${api1.baseUrl}/api/v1/golden-path/runs`, { headers: { authorization: `Bearer ${token}` } })).status === 503, { timeoutMs: 10_000, what: 'the slot to be taken' });
      await slow.closed;
      expect(slow.answer()).toMatch(/^HTTP\/1\.1 408/);
      // Answered as every error is: problem+json with a stable code and the request's id.
      expectProblem(slow.answer(), 408, 'request_timeout');
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

describe("a tenant's share of the in-flight slots (API_MAX_INFLIGHT_PER_TENANT)", () => {
  it('past its share a tenant gets 429 before its body is read, while another tenant is still served', async () => {
    const api1 = await spawnApi({ ...stack.env, API_MAX_INFLIGHT: '4', API_MAX_INFLIGHT_PER_TENANT: '2', API_REQUEST_TIMEOUT: '60s' });
    const noisy = await stack.token({ tenantId: newTenant(), sub: 'noisy' });
    const quiet = await stack.token({ tenantId: newTenant(), sub: 'quiet' });
    const list = (token: string) => fetch(`${api1.baseUrl}/api/v1/golden-path/runs`, { headers: { authorization: `Bearer ${token}` } });
    const slow = [await trickle(api1.baseUrl, noisy), await trickle(api1.baseUrl, noisy)];
    let uploading = true;
    try {
      // Two trickled uploads hold the noisy tenant's share (the global limit, 4, still has room). The
      // server may see a poll before an upload's headers: that upload then finds the share taken and
      // is refused at once; it is replaced until both hold their slots and a poll is the one refused.
      const refused = await waitFor(
        async () => {
          for (let i = 0; i < slow.length; i++) {
            if (!slow[i]!.answer()) continue;
            slow[i]!.socket.destroy();
            slow[i] = await trickle(api1.baseUrl, noisy);
          }
          const r = await list(noisy);
          if (r.status === 429 && slow.every((t) => !t.answer())) return r;
          await r.arrayBuffer();
          return undefined;
        },
        { timeoutMs: 10_000, what: "the noisy tenant's share to be taken" },
      );
      expect(refused.headers.get('content-type')).toContain('application/problem+json');
      expect(refused.headers.get('retry-after')).toBe('1');
      expect(((await refused.json()) as { code: string }).code).toBe('rate_limited');
      const metrics = await (await fetch(`${api1.baseUrl}/metrics`)).text();
      expect(refusedOf(metrics, 'tenant_in_flight', 'GET /api/v1/golden-path/runs')).toBeGreaterThanOrEqual(1);
      // A third upload of the noisy tenant is refused before its body arrives: the answer comes while
      // the body is still owed, and its slot is freed.
      const third = await trickle(api1.baseUrl, noisy);
      await waitFor(() => /^HTTP\/1\.1 429/.test(third.answer()), { timeoutMs: 10_000, what: 'the third upload to be refused' });
      third.socket.destroy();
      // The other tenant is served meanwhile: it is not shed by the noisy one.
      for (let i = 0; i < 3; i++) expect((await list(quiet)).status).toBe(200);
      // Once its uploads are gone, the noisy tenant is served again.
      for (const t of slow) t.socket.destroy();
      uploading = false;
      await waitFor(async () => (await list(noisy)).status === 200, { timeoutMs: 10_000, what: "the noisy tenant's slots to be free" });
    } finally {
      if (uploading) for (const t of slow) t.socket.destroy();
      await api1.stop();
    }
  });
});

describe('a client that hangs up while its handler works', () => {
  it("keeps its tenant's slot until the handler's database work ends, not until the connection closes", async () => {
    const api1 = await spawnApi({ ...stack.env, API_MAX_INFLIGHT: '8', API_MAX_INFLIGHT_PER_TENANT: '1' });
    const tenant = newTenant();
    const token = await stack.token({ tenantId: tenant, sub: 'hangs-up' });
    const list = () => fetch(`${api1.baseUrl}/api/v1/golden-path/runs`, { headers: { authorization: `Bearer ${token}` } });
    // Hold the run table so the submission's handler waits inside its transaction.
    const runs = await holdTable(stack.db.ownerUrl, 'durable_runs').catch(async (e: unknown) => {
      await api1.stop();
      throw e;
    });
    try {
      const abort = new AbortController();
      const key = randomUUID();
      const post = fetch(`${api1.baseUrl}/api/v1/golden-path/run`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'idempotency-key': key },
        body: JSON.stringify(SAMPLE_SUBMISSION),
        signal: abort.signal,
      }).catch(() => undefined);
      await runs.waiting('the submission to wait on the run table');
      // The client hangs up; the server sees it (its request log says so) while the handler still waits.
      abort.abort();
      await post;
      await waitFor(() => api1.lines().some((l) => l.msg === 'request aborted' && l.req?.method === 'POST'), { timeoutMs: 30_000, what: 'the API to see the hang-up' });
      const busy = await list();
      expect(busy.status, 'the slot is still the handler\'s').toBe(429);
      await runs.release();
      // The handler finishes (the submission is accepted under its key), and then the slot is free.
      await waitFor(async () => (await list()).status === 200, { timeoutMs: 30_000, what: 'the slot to be free after the handler ended' });
      const { rows } = await stack.db.admin(`select count(*)::int as n from durable_runs where tenant_id = $1`, [tenant]);
      expect(rows[0].n).toBe(1);
    } finally {
      await runs.close();
      await api1.stop();
    }
  });
});

describe('a client that hangs up while its token is still being verified', () => {
  it("takes no tenant slot for good: its tenant is served once the verification ends, not refused 429 from then on", async () => {
    // JWT_JWKS_URL (production's verification): the first token's check waits for the key set, which
    // this server holds until told, so the client can hang up before the tenant's share is taken.
    const keys = await generateKeyPair('RS256', { extractable: true });
    const jwk = { ...(await exportJWK(keys.publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' };
    let fetches = 0;
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    const jwksServer = createServer((_req, res) => {
      fetches++;
      void released.then(() => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [jwk] })));
    });
    await new Promise<void>((r) => jwksServer.listen(0, '127.0.0.1', r));
    const closeJwks = () => {
      release();
      jwksServer.closeAllConnections();
      return new Promise<void>((r) => jwksServer.close(() => r()));
    };
    const url = `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/jwks.json`;
    const api1 = await spawnApi({ ...stack.env, JWT_JWKS_URL: url, API_MAX_INFLIGHT: '8', API_MAX_INFLIGHT_PER_TENANT: '1' }).catch(async (e: unknown) => {
      await closeJwks();
      throw e;
    });
    try {
      const token = await new SignJWT({ tenant_id: newTenant(), roles: [] })
        .setProtectedHeader({ alg: 'RS256', kid: 'k1' })
        .setSubject('hangs-up-early')
        .setIssuer('dealix-dev')
        .setAudience('dealix-api')
        .setIssuedAt()
        .setExpirationTime('10m')
        .sign(keys.privateKey);
      const early = await openSocket(api1.baseUrl);
      early.socket.write(`GET /api/v1/golden-path/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n\r\n`);
      await waitFor(() => fetches > 0, { timeoutMs: 10_000, what: 'the token check to wait for the key set' });
      // The client hangs up while its token is checked; the server sees it (its request log says so).
      early.socket.destroy();
      await waitFor(() => api1.lines().some((l) => l.msg === 'request aborted' && l.req?.method === 'GET'), { timeoutMs: 30_000, what: 'the API to see the hang-up' });
      release();
      // The tenant's one slot is free: the hung-up request never ran, and holds nothing.
      for (let i = 0; i < 3; i++) {
        const r = await fetch(`${api1.baseUrl}/api/v1/golden-path/runs`, { headers: { authorization: `Bearer ${token}` } });
        expect(r.status, await r.text()).toBe(200);
      }
    } finally {
      await api1.stop();
      await closeJwks();
    }
  });
});

describe('connections without a valid token', () => {
  it('hold no slot: one still sending its headers is not a request yet, and one without a valid token is answered 401 before its body', async () => {
    // The real server (src/server.ts) with a single slot: if any of these held it, the request below would be shed.
    const api1 = await spawnApi({ ...stack.env, API_MAX_INFLIGHT: '1', API_REQUEST_TIMEOUT: '60s' });
    const sockets: net.Socket[] = [];
    try {
      const token = await stack.token({ tenantId: newTenant(), sub: 'served' });
      const headers = await openSocket(api1.baseUrl);
      sockets.push(headers.socket);
      headers.socket.write('POST /api/v1/golden-path/run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n');
      const uploads = [];
      for (const auth of ['', 'Authorization: Bearer not-a-token\r\n']) {
        const upload = await openSocket(api1.baseUrl);
        sockets.push(upload.socket);
        upload.socket.write(`POST /api/v1/golden-path/run HTTP/1.1\r\nHost: x\r\n${auth}Content-Type: application/json\r\nIdempotency-Key: ${randomUUID()}\r\nContent-Length: 1000\r\n\r\n{`);
        uploads.push(upload);
      }
      // Both uploads are refused while their bodies are still owed.
      for (const u of uploads) await waitFor(() => /^HTTP\/1\.1 401/.test(u.answer()), { timeoutMs: 10_000, what: 'an upload without a valid token to be refused' });
      // With all three connections open, the one slot is free for a request that has a token.
      for (let i = 0; i < 3; i++) {
        const r = await fetch(`${api1.baseUrl}/api/v1/golden-path/runs`, { headers: { authorization: `Bearer ${token}` } });
        expect(r.status, await r.text()).toBe(200);
      }
      expect(headers.answer(), 'the connection still sending its headers has had no answer').toBe('');
    } finally {
      for (const s of sockets) s.destroy();
      await api1.stop();
    }
  });
});

describe('requests the HTTP parser refuses before Express sees them', () => {
  it('are answered problem+json as every error is: 431 for an oversized token, 400 for a request that is not HTTP, 413 for oversized chunk extensions', async () => {
    const api1 = await spawnApi({ ...stack.env });
    try {
      // An identity provider that puts every group in the token: 20 kB of headers, over Node's 16 kB.
      const big = await stack.token({ tenantId: newTenant(), sub: 'many-groups', roles: Array.from({ length: 50 }, (_, i) => `group-${i}-${'x'.repeat(50)}`) });
      for (const [what, request, status, code] of [
        ['an oversized bearer token', `GET /api/v1/golden-path/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${big}${'x'.repeat(20_000)}\r\n\r\n`, 431, 'headers_too_large'],
        ['a malformed request line', 'GET /a b c HTTP/1.1\r\nHost: x\r\n\r\n', 400, 'bad_request'],
        ['a control character in a header', 'GET /api/v1/golden-path/runs HTTP/1.1\r\nHost: x\r\nX-Bad: a\u0001b\r\n\r\n', 400, 'bad_request'],
        // Chunk extensions past Node's limit (16 kB), sent with the headers: refused while the route still verifies nothing.
        ['oversized chunk extensions', `POST /api/v1/golden-path/run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2;ext=${'x'.repeat(20_000)}\r\n{}\r\n0\r\n\r\n`, 413, 'payload_too_large'],
      ] as const) {
        const conn = await openSocket(api1.baseUrl);
        conn.socket.write(request);
        await conn.closed;
        expect(conn.answer(), what).toMatch(new RegExp(`^HTTP/1\\.1 ${status} `));
        expectProblem(conn.answer(), status, code);
      }
      // The server goes on serving.
      expect((await fetch(`${api1.baseUrl}/healthz`)).status).toBe(200);
    } finally {
      await api1.stop();
    }
  });
});

/** A raw HTTP answer that is an RFC 9457 problem with `code`, carrying its request id (header and body). */
function expectProblem(raw: string, status: number, code: string): void {
  const [head = '', body = ''] = raw.split('\r\n\r\n');
  expect(head, raw).toMatch(/\r\ncontent-type: application\/problem\+json; charset=utf-8\r\n/i);
  const requestId = /\r\nx-request-id: ([0-9a-f-]{36})/i.exec(head)?.[1];
  expect(requestId, head).toBeDefined();
  expect(JSON.parse(body)).toMatchObject({ type: `https://docs.dealix.dev/problems/${code}`, status, code, request_id: requestId });
}

/** A POST whose headers promise 1,000 bytes of body, of which one is sent: it stays in flight. */
async function trickle(baseUrl: string, token: string): Promise<RawConnection> {
  const conn = await openSocket(baseUrl);
  conn.socket.write(`POST /api/v1/golden-path/run HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nContent-Type: application/json\r\nIdempotency-Key: ${randomUUID()}\r\nContent-Length: 1000\r\n\r\n{`);
  return conn;
}
