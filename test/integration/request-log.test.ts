import { afterAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { connect, type AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import express from 'express';
import { Redis } from 'ioredis';
import { createLogger } from '../../src/platform/telemetry/logger.ts';
import { httpLogger } from '../../src/platform/telemetry/http-logger.ts';
import { correlationMiddleware } from '../../src/platform/http/correlation.ts';
import { waitFor } from '../helpers/poll.ts';
import { capturedLog } from '../helpers/log-capture.ts';
import { parseConfig } from '../../src/platform/config/config.ts';
import { createTokenVerifier, signDevToken } from '../../src/platform/tenancy/jwt.ts';
import { adminAuth, OPERATOR_ROLE } from '../../src/platform/http/admin-auth.middleware.ts';
import { operatorSessions } from '../../src/platform/http/admin-board.ts';
import { TEST_JWT_SECRET, TEST_REDIS_URL } from '../helpers/env.ts';
import { postSignIn } from '../helpers/dashboard-sign-in.ts';
import { startOwnRedis } from '../helpers/own-infra.ts';

/** Where the guard keeps used `?token=` links: the shared Redis, under a prefix of this file's own. */
const redis = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
const prefix = `t${randomUUID().slice(0, 8)}`;
afterAll(async () => {
  const keys = await redis.keys(`${prefix}:*`);
  if (keys.length > 0) await redis.del(...keys);
  redis.disconnect();
});

/** An app with the request log (its lines captured) answering GET `path` with `status` (behind the dashboard's guard: `guarded`), listening. */
async function loggedApp(path: string, status: number, guarded = false) {
  const { lines, destination } = capturedLog();
  const logger = createLogger({ level: 'info', name: 'test', destination });
  const app = express();
  app.set('query parser', 'simple');
  app.use(correlationMiddleware);
  app.use(httpLogger(logger));
  if (guarded) {
    const config = parseConfig({ JWT_SECRET: TEST_JWT_SECRET, QUEUE_PREFIX: prefix });
    app.use(path, adminAuth({ verifier: createTokenVerifier(config), logger, basePath: path, sessions: operatorSessions(redis, config) }));
  }
  app.get(path, (_req, res) => void res.status(status).end());
  const server = await new Promise<Server>((r) => {
    const s = app.listen(0, '127.0.0.1', () => r(s));
  });
  return { lines, server };
}

/** GET `target` exactly as written (no client normalises or drops any of it), then the connection closes. */
async function rawGet(server: Server, target: string, correlationId: string): Promise<void> {
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.end(`GET ${target} HTTP/1.1\r\nHost: api\r\nX-Correlation-Id: ${correlationId}\r\nConnection: close\r\n\r\n`));
    socket.on('error', reject).on('close', () => resolve()).resume();
  });
}

describe('request log lines', () => {
  it('carry the correlation id and status, and never the bearer token, cookies or a ?token= value', async () => {
    const { lines, server } = await loggedApp('/admin/queues', 303);
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/admin/queues?token=eyJ.secret.sig`;
      await fetch(url, { redirect: 'manual', headers: { authorization: 'Bearer eyJ.header.sig', cookie: 'dealix_admin_token=eyJ.cookie.sig', 'x-correlation-id': 'log-1' } });
      const line = await waitFor(() => lines.find((l) => l.correlation_id === 'log-1'), { what: 'the request line' });
      expect(JSON.stringify(line)).not.toMatch(/eyJ\.(secret|header|cookie)/);
      expect(line.req).toMatchObject({ method: 'GET', url: '/admin/queues?token=[redacted]', headers: { authorization: '[redacted]', cookie: '[redacted]' } });
      expect(line.res.statusCode).toBe(303);
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it("never carry the Idempotency-Key (a client's replay handle) nor an X-Correlation-Id the API refused; a valid one stays", async () => {
    const { lines, server } = await loggedApp('/keyed', 200);
    try {
      const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/keyed`;
      const key = `key-${randomUUID()}`;
      const refused = `not valid! ${randomUUID()}`;
      await fetch(`${base}?n=1`, { headers: { 'idempotency-key': key, 'x-correlation-id': refused } });
      await fetch(`${base}?n=2`, { headers: { 'x-correlation-id': 'log-valid-1' } });
      const first = await waitFor(() => lines.find((l) => l.req?.url === '/keyed?n=1'), { what: 'the first request line' });
      expect(JSON.stringify(first)).not.toContain(key);
      expect(JSON.stringify(first)).not.toContain(refused);
      expect(first.req.headers).toMatchObject({ 'idempotency-key': '[redacted]', 'x-correlation-id': '[invalid]' });
      // The id the API answered with instead is the line's correlation id.
      expect(first.correlation_id).toMatch(/^[0-9a-f-]{36}$/);
      const second = await waitFor(() => lines.find((l) => l.req?.url === '/keyed?n=2'), { what: 'the second request line' });
      expect(second.req.headers['x-correlation-id']).toBe('log-valid-1');
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it("never carry a secret a raw request target puts in its query (any case, encoded) or its fragment, which Node keeps in req.url", async () => {
    const { lines, server } = await loggedApp('/api/v1/things', 200);
    try {
      // A client that sends the URL it was given as is, `#access_token=…` (an OAuth redirect's) included: fetch would drop the fragment.
      const target = '/api/v1/things?Token=eyJ.query.sig&limit=5#access_token=eyJ.frag.sig&state=s';
      await rawGet(server, target, 'log-fragment');
      const line = await waitFor(() => lines.find((l) => l.correlation_id === 'log-fragment'), { what: 'the request line' });
      expect(JSON.stringify(line)).not.toMatch(/eyJ\.(query|frag)/);
      expect(line.req).toMatchObject({ url: '/api/v1/things?Token=[redacted]&limit=5#access_token=[redacted]&state=s', query: { Token: '[redacted]', limit: '5' } });
      expect(line.res.statusCode).toBe(200);
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  // A security review found `?token[]=<jwt>` (and `token%5B%5D`) logged whole, in req.url and req.query: the name was
  // matched exactly. Now by its name before any bracket suffix, decoded, any case; and a JWT under any name.
  it('never carry a token sent under a bracketed name (token[], Token%5B0%5D, access_token[a][b]) nor a JWT under any name, and keep the rest', async () => {
    const { lines, server } = await loggedApp('/admin/queues', 200);
    try {
      const config = parseConfig({ JWT_SECRET: TEST_JWT_SECRET });
      const jwts = await Promise.all([1, 2, 3, 4, 5].map((n) => signDevToken(config, { sub: `bracket-${n}`, tenantId: randomUUID(), roles: [OPERATOR_ROLE] })));
      const target = `/admin/queues?token[]=${jwts[0]}&Token%5B0%5D=${jwts[1]}&access_token[a][b]=${jwts[2]}&%70assword%5B%5D=pw-secret&next=${jwts[3]}&limit=5&status[]=failed#id_token=x&state=${jwts[4]}`;
      await rawGet(server, target, 'log-brackets');
      const line = await waitFor(() => lines.find((l) => l.correlation_id === 'log-brackets'), { what: 'the request line' });
      // No part of any token: not its signature, nor its payload (the claims name the operator and tenant).
      for (const jwt of jwts) for (const part of jwt.split('.').slice(1)) expect(JSON.stringify(line)).not.toContain(part);
      expect(JSON.stringify(line)).not.toContain('pw-secret');
      expect(line.req.url).toBe('/admin/queues?token[]=[redacted]&Token%5B0%5D=[redacted]&access_token[a][b]=[redacted]&%70assword%5B%5D=[redacted]&next=[redacted]&limit=5&status[]=failed#id_token=x&state=[redacted]');
      expect(line.req.query).toEqual({ 'token[]': '[redacted]', 'Token[0]': '[redacted]', 'access_token[a][b]': '[redacted]', 'password[]': '[redacted]', next: '[redacted]', limit: '5', 'status[]': 'failed' });
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it("the dashboard's sign-in page and token exchange redirect without any credential the link's query held, so the Location header (logged) has none", async () => {
    const { lines, server } = await loggedApp('/admin/queues', 200, true);
    try {
      const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const token = await signDevToken(parseConfig({ JWT_SECRET: TEST_JWT_SECRET }), { sub: 'operator-1', tenantId: randomUUID(), roles: [OPERATOR_ROLE] });
      const second = 'eyJ.second.sig';
      const page = await fetch(`${base}/admin/queues?status=failed&token=${token}&Access_Token=${second}&%70assword=pw-secret`, { headers: { 'x-correlation-id': 'log-page' } });
      expect(page.status).toBe(200);
      // The page sends the browser on with the dashboard's own parameters, and no other credential.
      const next = /name="next" value="([^"]*)"/.exec(await page.text())?.[1];
      expect(next).toBe('/admin/queues?status=failed');
      const pageLine = await waitFor(() => lines.find((l) => l.correlation_id === 'log-page'), { what: "the page's request line" });
      for (const secret of [token, second, 'pw-secret']) expect(JSON.stringify(pageLine)).not.toContain(secret);
      const res = await postSignIn(base, token, { next, headers: { 'x-correlation-id': 'log-exchange', 'sec-fetch-site': 'same-origin' } });
      expect(res.status).toBe(303);
      // The exchange works: the session cookie (an id, never the token), and the dashboard's own parameters kept.
      expect(res.setCookie).toMatch(/^dealix_admin_token=[A-Za-z0-9_-]{43};/);
      expect(res.location).toBe('/admin/queues?status=failed');
      const line = await waitFor(() => lines.find((l) => l.correlation_id === 'log-exchange'), { what: 'the request line' });
      expect(JSON.stringify(line)).not.toContain(token);
      expect(JSON.stringify(line)).not.toContain(second);
      expect(JSON.stringify(line)).not.toContain('pw-secret');
      // Nor the session id the cookie carries (Set-Cookie is redacted): it is a credential too.
      expect(JSON.stringify(line)).not.toContain(/^dealix_admin_token=([^;]*);/.exec(res.setCookie ?? '')![1]);
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
});

describe('error log lines', () => {
  it("never carry the operator's token when Redis refuses the sign-in exchange (ioredis puts a failed command's arguments on its error)", async () => {
    // A private redis-server that refuses every write (maxmemory reached, noeviction: as BullMQ
    // requires), so the exchange script fails with OOM while its reads still answer.
    const own = await startOwnRedis(); // started, and stopped in finally
    const client = new Redis(own.url, { maxRetriesPerRequest: 1 });
    const { lines, destination } = capturedLog();
    const logger = createLogger({ level: 'info', name: 'test', destination });
    const app = express();
    const config = parseConfig({ JWT_SECRET: TEST_JWT_SECRET, QUEUE_PREFIX: prefix });
    app.use(correlationMiddleware);
    app.use(httpLogger(logger));
    app.use('/admin/queues', adminAuth({ verifier: createTokenVerifier(config), logger, basePath: '/admin/queues', sessions: operatorSessions(client, config) }));
    let server: Server | undefined;
    try {
      await own.client.config('SET', 'maxmemory-policy', 'noeviction');
      await own.client.config('SET', 'maxmemory', '1');
      server = await new Promise<Server>((r) => {
        const s = app.listen(0, '127.0.0.1', () => r(s));
      });
      const token = await signDevToken(config, { sub: 'operator-oom', tenantId: randomUUID(), roles: [OPERATOR_ROLE] });
      const res = await postSignIn(`http://127.0.0.1:${(server.address() as AddressInfo).port}`, token, { headers: { 'x-correlation-id': 'log-oom', 'sec-fetch-site': 'same-origin' } });
      expect(res.status, res.text).toBe(503);
      const failed = await waitFor(() => lines.find((l) => l.msg === 'request failed' && l.correlation_id === 'log-oom'), { what: "the failure's error line" });
      expect(JSON.stringify(failed)).toContain('OOM');
      await waitFor(() => lines.find((l) => l.correlation_id === 'log-oom' && l.res), { what: 'the request line' });
      for (const line of lines) expect(JSON.stringify(line)).not.toContain(token.split('.')[2]);
    } finally {
      if (server) await new Promise<void>((r) => server!.close(() => r()));
      client.disconnect();
      await own.stop();
    }
  });
});
