import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { randomUUID } from 'node:crypto';
import { SignJWT } from 'jose';
import { createApp } from '../../src/app.ts';
import { createContainer, type Container } from '../../src/container.ts';
import { ADMIN_COOKIE, OPERATOR_ROLE } from '../../src/platform/http/admin-auth.middleware.ts';
import { untilReady } from '../../src/platform/queue/connections.ts';
import { operatorSessions } from '../../src/platform/http/admin-board.ts';
import { signDevToken } from '../../src/platform/tenancy/jwt.ts';
import { api, newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';

/**
 * Ending an operator's dashboard session: `POST /admin/queues/logout` deletes the cookie and revokes
 * its token in Redis until the token's exp, for every API process; and a `?token=` link works once,
 * so the URL a browser's history or a proxy's log keeps cannot sign anyone in again.
 */
let stack: TestStack;
/** A second API process: its own container (Redis connection, verifier with its own memo of tokens, ADR 0006). */
let other: { container: Container; server: Server; baseUrl: string } | undefined;

beforeAll(async () => {
  stack = await startStack();
  const container = await createContainer(stack.config, { service: 'api' });
  await untilReady(container.redis, 5_000);
  const server = await new Promise<Server>((resolve) => {
    const s = createApp(container).listen(0, '127.0.0.1', () => resolve(s));
  });
  other = { container, server, baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
});
afterAll(async () => {
  if (other) {
    await new Promise((r) => other!.server.close(r));
    await other.container.close();
  }
  await stack?.stop();
});

const operatorToken = (sub: string) => stack.token({ tenantId: newTenant(), sub, roles: [OPERATOR_ROLE] });
const cookieOf = (token: string) => ({ cookie: `${ADMIN_COOKIE}=${token}` });
/** What the dashboard's own page sends with a form it submits. */
const ownPage = () => ({ 'sec-fetch-site': 'same-origin', origin: stack.baseUrl });

/** An operator token as an identity provider that issues no `jti` signs it (expiring in 10 minutes, or at `exp`). */
const noJtiToken = (sub: string, exp = Math.floor(Date.now() / 1000) + 600) =>
  new SignJWT({ tenant_id: randomUUID(), roles: [OPERATOR_ROLE] })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setSubject(sub)
    .setIssuer(stack.config.JWT_ISSUER)
    .setAudience(stack.config.JWT_AUDIENCE)
    .setIssuedAt()
    .setExpirationTime(exp)
    .sign(new TextEncoder().encode(stack.config.JWT_SECRET!));

/**
 * Other spellings of `token` that verify as it: its signature padded, in the standard base64
 * alphabet, or with the spare low bits of its last character set (HS256's 32 bytes take 42⅔ characters).
 */
function spellings(token: string): string[] {
  const [head, payload, sig] = token.split('.') as [string, string, string];
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  const spare = `${sig.slice(0, -1)}${alphabet[alphabet.indexOf(sig.at(-1)!) ^ 1]}`;
  const standard = sig.replace(/-/g, '+').replace(/_/g, '/');
  return [`${sig}=`, spare, ...(standard !== sig ? [standard] : [])].map((s) => `${head}.${payload}.${s}`);
}

/** A one-time `?token=` visit, as a browser makes it (not following the redirect). */
async function visit(base: string, token: string) {
  const res = await fetch(`${base}/admin/queues?token=${token}`, { redirect: 'manual' });
  const text = await res.text();
  return { status: res.status, setCookie: res.headers.get('set-cookie'), contentType: res.headers.get('content-type'), text };
}

async function get(base: string, headers: Record<string, string>) {
  const res = await fetch(`${base}/admin/queues`, { headers });
  const text = await res.text();
  return { status: res.status, contentType: res.headers.get('content-type'), text };
}

describe('signing out of the dashboard', () => {
  it('GET /admin/queues/logout shows a form that posts the sign-out; it signs nobody out by itself', async () => {
    const token = await operatorToken('ops-form');
    const form = await api(stack, 'GET', '/admin/queues/logout', { headers: cookieOf(token) });
    expect(form.status).toBe(200);
    expect(form.headers.get('content-type')).toContain('text/html');
    expect(form.text).toMatch(/<form method="post" action="\/admin\/queues\/logout">/);
    expect(form.headers.get('set-cookie')).toBeNull();
    expect(form.headers.get('x-frame-options')).toBe('DENY');
    expect((await get(stack.baseUrl, cookieOf(token))).status).toBe(200);
  });

  it('deletes the cookie and revokes its token until exp: refused afterwards by cookie, header and ?token=, on another API process too', async () => {
    const token = await operatorToken('ops-logout');
    const link = await visit(stack.baseUrl, token);
    expect(link.status).toBe(303);
    // The other process has seen (and remembered, ADR 0006) the token before the sign-out.
    expect((await get(other!.baseUrl, cookieOf(token))).status).toBe(200);
    expect((await get(other!.baseUrl, { authorization: `Bearer ${token}` })).status).toBe(200);

    const out = await api(stack, 'POST', '/admin/queues/logout', { headers: { ...cookieOf(token), ...ownPage() } });
    expect(out.status, out.text).toBe(200);
    expect(out.headers.get('set-cookie')).toMatch(new RegExp(`^${ADMIN_COOKIE}=; Path=/admin/queues; HttpOnly; SameSite=Strict; Max-Age=0`));
    expect(out.headers.get('cache-control')).toBe('no-store');

    for (const base of [stack.baseUrl, other!.baseUrl]) {
      for (const headers of [cookieOf(token), { authorization: `Bearer ${token}` }]) {
        const refused = await get(base, headers);
        expect(refused.status, `${base} ${Object.keys(headers)[0]}`).toBe(401);
        expect(refused.contentType).toContain('application/problem+json');
        expect(refused.text).toContain('signed out');
      }
      const again = await visit(base, token);
      expect(again.status).toBe(401);
      expect(again.setCookie).toBeNull();
    }
    // Kept in Redis until the token would stop verifying anyway (its exp, plus the clock tolerance), so nothing piles up.
    const keys = await stack.redis.keys(`${stack.prefix}:operator-session:revoked:*`);
    expect(keys.length).toBeGreaterThanOrEqual(1);
    const exp = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()).exp as number;
    const ttls = await Promise.all(keys.map((k) => stack.redis.ttl(k)));
    for (const ttl of ttls) {
      expect(ttl).toBeGreaterThan(0);
      expect(ttl).toBeLessThanOrEqual(exp - Math.floor(Date.now() / 1000) + stack.config.JWT_CLOCK_TOLERANCE / 1000 + 2);
    }
    // Another operator's token, and a new one for the same operator, still work.
    expect((await get(stack.baseUrl, cookieOf(await operatorToken('ops-logout')))).status).toBe(200);
    expect((await visit(other!.baseUrl, await operatorToken('ops-logout'))).status).toBe(303);
  });

  it('a tool signs out its bearer token the same way; a token without a jti is revoked by its hash', async () => {
    // An identity provider that issues no jti: the token's signed content identifies it.
    const token = await noJtiToken('ops-tool');
    expect((await api(stack, 'GET', '/admin/queues/api/queues', { token })).status).toBe(200);
    expect((await api(stack, 'POST', '/admin/queues/logout', { token })).status).toBe(200);
    expect((await api(stack, 'GET', '/admin/queues/api/queues', { token })).status).toBe(401);
    expect(await stack.redis.keys(`${stack.prefix}:operator-session:revoked:token:*`)).toHaveLength(1);
  });

  it('a revoked token without a jti stays refused however its signature is spelled (padding, alphabet, spare bits)', async () => {
    // jose decodes the signature leniently: each of these verifies as the same token. An ES256
    // signature (r, n − s) verifies as well, so anyone can also re-sign a copy: the key is the signed content.
    const token = await noJtiToken('ops-spelling');
    expect((await api(stack, 'POST', '/admin/queues/logout', { token })).status).toBe(200);
    for (const copy of spellings(token)) {
      expect((await api(stack, 'GET', '/admin/queues/api/queues', { token: copy })).status, copy.slice(-6)).toBe(401);
      expect((await get(stack.baseUrl, cookieOf(copy))).status, copy.slice(-6)).toBe(401);
    }
  });

  it('a sign-out another site submits is refused (403) and revokes nothing', async () => {
    const token = await operatorToken('ops-csrf');
    const forged: Array<Record<string, string>> = [{ 'sec-fetch-site': 'same-site', origin: 'https://tenant-content.example' }, { origin: 'https://evil.example' }];
    for (const headers of forged) {
      const res = await api(stack, 'POST', '/admin/queues/logout', { headers: { ...cookieOf(token), ...headers } });
      expect(res.status).toBe(403);
      expect(res.headers.get('set-cookie')).toBeNull();
    }
    expect((await get(stack.baseUrl, cookieOf(token))).status).toBe(200);
  });

  it('a token that does not verify is not written to Redis; the cookie is deleted all the same', async () => {
    const before = await stack.redis.keys(`${stack.prefix}:operator-session:revoked:*`);
    const res = await api(stack, 'POST', '/admin/queues/logout', { headers: { cookie: `${ADMIN_COOKIE}=eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjk5OTk5OTk5OTl9.bad` } });
    expect(res.status).toBe(200);
    expect(res.headers.get('set-cookie')).toContain('Max-Age=0');
    expect(await stack.redis.keys(`${stack.prefix}:operator-session:revoked:*`)).toEqual(before);
  });
});

describe('the ?token= link works once', () => {
  it('a second visit with the same link is refused, while the cookie it set and the token as a bearer header keep working', async () => {
    const token = await operatorToken('ops-link');
    const first = await visit(stack.baseUrl, token);
    expect(first.status).toBe(303);
    expect(first.setCookie).toContain(`${ADMIN_COOKIE}=${token}`);
    for (const base of [stack.baseUrl, other!.baseUrl]) {
      const replay = await visit(base, token);
      expect(replay.status, base).toBe(401);
      expect(replay.contentType).toContain('application/problem+json');
      expect(replay.text).toContain('used already');
      expect(replay.setCookie).toBeNull();
    }
    expect((await get(stack.baseUrl, cookieOf(token))).status).toBe(200);
    expect((await get(other!.baseUrl, { authorization: `Bearer ${token}` })).status).toBe(200);
    // A new token makes a new link.
    expect((await visit(stack.baseUrl, await operatorToken('ops-link'))).status).toBe(303);
  });

  it('a used link is refused however its signature is spelled', async () => {
    const token = await operatorToken('ops-link-spelling');
    expect((await visit(stack.baseUrl, token)).status).toBe(303);
    for (const copy of spellings(token)) {
      const replay = await visit(stack.baseUrl, encodeURIComponent(copy));
      expect(replay.status, copy.slice(-6)).toBe(401);
      expect(replay.setCookie).toBeNull();
    }
  });

  it('a token whose exp has a fraction of a second (a NumericDate may) signs in once by link and signs out', async () => {
    const token = await noJtiToken('ops-fraction', Math.floor(Date.now() / 1000) + 600.5);
    const first = await visit(stack.baseUrl, token);
    expect(first.status, first.text).toBe(303);
    // Max-Age takes whole seconds only: a browser ignores any other, and the cookie would outlive the token.
    expect(first.setCookie).toMatch(/; Max-Age=\d+(;|$)/);
    expect((await visit(stack.baseUrl, token)).status).toBe(401);
    const out = await api(stack, 'POST', '/admin/queues/logout', { token });
    expect(out.status, out.text).toBe(200);
    expect((await get(stack.baseUrl, cookieOf(token))).status).toBe(401);
  });

  it('a link whose token has whitespace around it is refused (401) and not used up', async () => {
    // jose decodes a signature with a trailing newline, but the cookie could not carry it (a header
    // holds no line break): it was a 500 after the link was claimed.
    const token = await operatorToken('ops-link-space');
    for (const odd of [`${token}\n`, `${token}\t`, ` ${token}`]) {
      const res = await visit(stack.baseUrl, encodeURIComponent(odd));
      expect(res.status, JSON.stringify(odd.slice(-2))).toBe(401);
      expect(res.setCookie).toBeNull();
    }
    expect((await visit(stack.baseUrl, token)).status).toBe(303);
  });

  it('of visits arriving together, exactly one exchanges the link', async () => {
    const token = await operatorToken('ops-race');
    const statuses = await Promise.all(Array.from({ length: 8 }, (_, i) => visit(i % 2 ? other!.baseUrl : stack.baseUrl, token).then((r) => r.status)));
    expect(statuses.filter((s) => s === 303)).toHaveLength(1);
    expect(statuses.filter((s) => s === 401)).toHaveLength(7);
  });

  it('a link refused for its role is not used up', async () => {
    const token = await stack.token({ tenantId: newTenant(), sub: 'tenant-admin', roles: ['admin'] });
    expect((await visit(stack.baseUrl, token)).status).toBe(403);
    expect((await visit(stack.baseUrl, token)).status).toBe(403);
  });
});

describe("records last by the API's clock, not Redis's", () => {
  it('an API whose clock is behind Redis\'s still keeps a sign-out and a used link until the token expires for it', async () => {
    // The API decides when a token stops verifying, by its own clock: an absolute expiry (EXAT) read by
    // Redis's clock, ahead here by 2 h, had already passed, and Redis dropped both records at once.
    const skew = 2 * 3600_000;
    const apiNow = Date.now() - skew;
    const clock = vi.spyOn(Date, 'now').mockImplementation(() => apiNow);
    try {
      const token = await signDevToken(stack.config, { tenantId: newTenant(), sub: 'ops-skew', roles: [OPERATOR_ROLE], ttlSeconds: 600 });
      const sessions = operatorSessions(stack.redis, stack.config);
      await sessions.revoke(token);
      expect(await sessions.isRevoked(token)).toBe(true);
      expect(await sessions.claimExchange(token)).toBe(true);
      expect(await sessions.claimExchange(token)).toBe(false);
    } finally {
      clock.mockRestore();
    }
  });
});

describe('while Redis is down the dashboard fails closed', () => {
  // A private redis-server, stopped here: the shared one is never touched.
  let down: TestStack;
  beforeAll(async () => {
    down = await startStack({ ownRedis: true });
  });
  afterAll(async () => down?.stop());

  it('answers 503 to a valid token (header, cookie, link) and to a sign-out, and sets no cookie; works again once Redis is back', async () => {
    const token = await down.token({ tenantId: newTenant(), sub: 'ops-down', roles: [OPERATOR_ROLE] });
    const link = await down.token({ tenantId: newTenant(), sub: 'ops-down-link', roles: [OPERATOR_ROLE] });
    expect((await get(down.baseUrl, { authorization: `Bearer ${token}` })).status).toBe(200);
    await down.ownRedis!.stopServer();
    try {
      await waitFor(async () => (await api(down, 'GET', '/readyz')).status === 503, { timeoutMs: 30_000, what: 'the API to see Redis down' });
      for (const headers of [{ authorization: `Bearer ${token}` }, cookieOf(token)]) {
        const res = await get(down.baseUrl, headers);
        expect(res.status, res.text).toBe(503);
        expect(res.contentType).toContain('application/problem+json');
      }
      const viaLink = await visit(down.baseUrl, link);
      expect(viaLink.status).toBe(503);
      expect(viaLink.setCookie).toBeNull();
      const out = await fetch(`${down.baseUrl}/admin/queues/logout`, { method: 'POST', headers: cookieOf(token) });
      expect(out.status).toBe(503);
      expect(out.headers.get('set-cookie')).toBeNull();
    } finally {
      await down.ownRedis!.startServer();
    }
    await waitFor(async () => (await get(down.baseUrl, { authorization: `Bearer ${token}` })).status === 200, { timeoutMs: 30_000, what: 'the dashboard back with Redis' });
    expect((await visit(down.baseUrl, link)).status).toBe(303);
  });
});
