import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { SignJWT } from 'jose';
import { createApp } from '../../src/app.ts';
import { createContainer, type Container } from '../../src/container.ts';
import { ADMIN_COOKIE, OPERATOR_ROLE } from '../../src/platform/http/admin-auth.middleware.ts';
import { untilReady } from '../../src/platform/queue/connections.ts';
import { operatorSessions } from '../../src/platform/http/admin-board.ts';
import { signDevToken } from '../../src/platform/tenancy/jwt.ts';
import { api, newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { OTHER_ORIGINS, postSignIn } from '../helpers/dashboard-sign-in.ts';

/**
 * The operator's dashboard session: a `?token=` link shows a sign-in page (a GET, which a chat's link
 * preview or a mail scanner also makes, uses nothing up), whose button posts the token; that POST works
 * once and trades the token for a server-side session (the cookie holds an opaque id, never the JWT), after which the token signs nothing in on any
 * channel, so the URL a browser's history or a proxy's log keeps cannot sign anyone in again; and
 * `POST /admin/queues/logout` ends the session and revokes its token in Redis, for every API process.
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
/** What the dashboard's own page (on `base`) sends with a form it submits. */
const ownPage = (base = stack.baseUrl) => ({ 'sec-fetch-site': 'same-origin', origin: base });

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

/** The session cookie a `?token=` visit set, as the browser sends it back. */
function sessionCookie(setCookie: string | null): { cookie: string } {
  const value = new RegExp(`^${ADMIN_COOKIE}=([^;]*);`).exec(setCookie ?? '')?.[1];
  expect(value, setCookie ?? 'no Set-Cookie').toBeTruthy();
  return { cookie: `${ADMIN_COOKIE}=${value}` };
}

/** Signs in as a browser does: a `?token=` visit shows the sign-in page, whose button posts the exchange. The browser's session cookie. */
async function signIn(base: string, token: string): Promise<{ cookie: string }> {
  const link = await visit(base, token);
  expect(link.status, link.text).toBe(200);
  const posted = await exchange(base, token);
  expect(posted.status, posted.text).toBe(303);
  return sessionCookie(posted.setCookie);
}

/** The Redis key of a session, by the cookie's id (its hash: Redis never holds the id itself). */
const sessionKey = (cookie: { cookie: string }) => `${stack.prefix}:operator-session:sid:${createHash('sha256').update(cookie.cookie.slice(ADMIN_COOKIE.length + 1)).digest('base64url')}`;

/** A `?token=` visit (a browser, a chat's link preview, a mail scanner): it shows the sign-in page, and uses nothing up. */
async function visit(base: string, token: string, path = '/admin/queues?') {
  const res = await fetch(`${base}${path}token=${token}`, { redirect: 'manual' });
  const text = await res.text();
  return { status: res.status, headers: res.headers, setCookie: res.headers.get('set-cookie'), contentType: res.headers.get('content-type'), text };
}

/** The sign-in page's button: a POST of the token in the body, which exchanges the link. */
const exchange = postSignIn;

async function get(base: string, headers: Record<string, string>) {
  const res = await fetch(`${base}/admin/queues`, { headers });
  const text = await res.text();
  return { status: res.status, contentType: res.headers.get('content-type'), text };
}

describe('signing out of the dashboard', () => {
  it('GET /admin/queues/logout shows a form that posts the sign-out; it signs nobody out by itself', async () => {
    const session = await signIn(stack.baseUrl, await operatorToken('ops-form'));
    const form = await api(stack, 'GET', '/admin/queues/logout', { headers: session });
    expect(form.status).toBe(200);
    expect(form.headers.get('content-type')).toContain('text/html');
    expect(form.text).toMatch(/<form method="post" action="\/admin\/queues\/logout">/);
    expect(form.headers.get('set-cookie')).toBeNull();
    expect(form.headers.get('x-frame-options')).toBe('DENY');
    expect((await get(stack.baseUrl, session)).status).toBe(200);
  });

  it('ends the session and deletes the cookie on every API process, and revokes its token until exp', async () => {
    const token = await operatorToken('ops-logout');
    const session = await signIn(stack.baseUrl, token);
    // The other process has served (and its verifier remembered, ADR 0006) the session before the sign-out.
    expect((await get(other!.baseUrl, session)).status).toBe(200);

    const out = await api(stack, 'POST', '/admin/queues/logout', { headers: { ...session, ...ownPage() } });
    expect(out.status, out.text).toBe(200);
    expect(out.headers.get('set-cookie')).toMatch(new RegExp(`^${ADMIN_COOKIE}=; Path=/admin/queues; HttpOnly; SameSite=Strict; Max-Age=0`));
    expect(out.headers.get('cache-control')).toBe('no-store');

    expect(await stack.redis.exists(sessionKey(session))).toBe(0);
    for (const base of [stack.baseUrl, other!.baseUrl]) {
      const ended = await get(base, session);
      expect(ended.status, base).toBe(401);
      expect(ended.contentType).toContain('application/problem+json');
      expect(ended.text).toContain('session');
      const refused = await get(base, { authorization: `Bearer ${token}` });
      expect(refused.status, base).toBe(401);
      expect(refused.text).toContain('signed out');
      for (const again of [await visit(base, token), await exchange(base, token)]) {
        expect(again.status).toBe(401);
        expect(again.setCookie).toBeNull();
      }
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
    // A new token for the same operator still works, as a tool's header and as a link.
    expect((await get(stack.baseUrl, { authorization: `Bearer ${await operatorToken('ops-logout')}` })).status).toBe(200);
    expect((await get(other!.baseUrl, await signIn(other!.baseUrl, await operatorToken('ops-logout')))).status).toBe(200);
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
    const session = await signIn(stack.baseUrl, await operatorToken('ops-csrf'));
    const forged: Array<Record<string, string>> = [{ 'sec-fetch-site': 'same-site', origin: 'https://tenant-content.example' }, { origin: 'https://evil.example' }];
    for (const headers of forged) {
      const res = await api(stack, 'POST', '/admin/queues/logout', { headers: { ...session, ...headers } });
      expect(res.status).toBe(403);
      expect(res.headers.get('set-cookie')).toBeNull();
    }
    expect((await get(stack.baseUrl, session)).status).toBe(200);
  });

  it('a token that does not verify is not written to Redis; the cookie is deleted all the same', async () => {
    const before = await stack.redis.keys(`${stack.prefix}:operator-session:revoked:*`);
    const res = await api(stack, 'POST', '/admin/queues/logout', { headers: { cookie: `${ADMIN_COOKIE}=eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjk5OTk5OTk5OTl9.bad` } });
    expect(res.status).toBe(200);
    expect(res.headers.get('set-cookie')).toContain('Max-Age=0');
    expect(await stack.redis.keys(`${stack.prefix}:operator-session:revoked:*`)).toEqual(before);
  });
});

describe('a GET of the link uses nothing up: only the sign-in button (a POST) exchanges it', () => {
  it('visited any number of times (a chat preview, a mail scanner, a prefetch), the link shows a sign-in page, sets no cookie and stays usable', async () => {
    const token = await operatorToken('ops-preview');
    const sessions = operatorSessions(stack.redis, stack.config);
    for (const base of [stack.baseUrl, other!.baseUrl, stack.baseUrl, other!.baseUrl]) {
      const page = await visit(base, token);
      expect(page.status, page.text).toBe(200);
      expect(page.contentType).toContain('text/html');
      expect(page.setCookie).toBeNull();
      expect(page.headers.get('cache-control')).toBe('no-store');
      expect(page.headers.get('referrer-policy')).toBe('no-referrer');
      const csp = page.headers.get('content-security-policy') ?? '';
      for (const directive of ["default-src 'none'", "form-action 'self'", "frame-ancestors 'none'", "base-uri 'none'"]) expect(csp).toContain(directive);
      // One form posting the token in its body to the exchange; no script, nothing from elsewhere.
      expect(page.text).toMatch(/<form method="post" action="\/admin\/queues\/sign-in">/);
      expect(page.text).toContain(`<input type="hidden" name="token" value="${token}">`);
      expect(page.text).toContain('ops-preview');
      expect(page.text).not.toMatch(/<script|https?:\/\/|\/\/[a-z]/i);
      expect(await sessions.refusal(token)).toBeUndefined();
    }
    const first = await exchange(stack.baseUrl, token);
    expect(first.status, first.text).toBe(303);
    expect(first.location).toBe('/admin/queues');
    expect(first.setCookie).toMatch(new RegExp(`^${ADMIN_COOKIE}=[A-Za-z0-9_-]{43}; Path=/admin/queues; HttpOnly; SameSite=Strict; Max-Age=\\d+$`));
    expect((await get(other!.baseUrl, sessionCookie(first.setCookie))).status).toBe(200);
    // Exchanged once: the button pressed again, and the link visited again, are refused.
    for (const base of [stack.baseUrl, other!.baseUrl]) {
      for (const replay of [await exchange(base, token), await visit(base, token)]) {
        expect(replay.status, base).toBe(401);
        expect(replay.contentType).toContain('application/problem+json');
        expect(replay.text).toContain('used already');
        expect(replay.setCookie).toBeNull();
      }
    }
  });

  it('the page sends the browser on to the page the link named, and only within the dashboard', async () => {
    const token = await operatorToken('ops-next');
    const page = await visit(stack.baseUrl, token, '/admin/queues/queue/golden-path?status=completed&');
    expect(page.status, page.text).toBe(200);
    expect(page.text).toContain('<input type="hidden" name="next" value="/admin/queues/queue/golden-path?status=completed">');
    expect((await exchange(stack.baseUrl, token, { next: '/admin/queues/queue/golden-path?status=completed' })).location).toBe('/admin/queues/queue/golden-path?status=completed');
    // Whatever a forged form says: no other host, no path outside the dashboard, no credential in the Location.
    for (const next of ['//evil.example/x', 'https://evil.example/', '/admin/queues/../../x', '/api/v1/x']) {
      const res = await exchange(stack.baseUrl, await operatorToken('ops-next'), { next });
      expect(res.status, next).toBe(303);
      expect(res.location, next).toMatch(/^\/admin\/queues(\/|$)/);
    }
    expect((await exchange(stack.baseUrl, await operatorToken('ops-next'), { next: '/admin/queues?x=1&token=abc&Password=p' })).location).toBe('/admin/queues?x=1');
    // The page escapes what the URL says.
    const odd = await visit(stack.baseUrl, await operatorToken('ops-next'), '/admin/queues/queue/"><b>x?q=<i>&');
    expect(odd.text).not.toContain('<b>');
    expect(odd.text).not.toContain('<i>');
  });

  it("a sign-in another site's page posts (login CSRF: the attacker's token in the operator's browser) is refused and uses nothing up", async () => {
    const token = await operatorToken('ops-login-csrf');
    // And neither header: no browser's form (a browser sends one or the other with a POST); the exchange is for browsers.
    for (const headers of [...OTHER_ORIGINS, {}]) {
      const res = await exchange(stack.baseUrl, token, { headers });
      expect(res.status, JSON.stringify(headers)).toBe(403);
      expect(res.setCookie).toBeNull();
    }
    expect(await operatorSessions(stack.redis, stack.config).refusal(token)).toBeUndefined();
    expect((await exchange(stack.baseUrl, token)).status).toBe(303);
  });

  it("from a browser without Sec-Fetch-Site, the Origin must be the dashboard's own origin, scheme included, not only its host", async () => {
    const token = await operatorToken('ops-login-csrf-scheme');
    // The same host and port over the other scheme is another origin (a page a network attacker
    // serves on the plain-HTTP side of an HTTPS dashboard, say): its form posting the attacker's token is login CSRF.
    const otherScheme = stack.baseUrl.replace(/^http:/, 'https:');
    const res = await exchange(stack.baseUrl, token, { headers: { origin: otherScheme } });
    expect(res.status, res.text).toBe(403);
    expect(res.setCookie).toBeNull();
    expect(await operatorSessions(stack.redis, stack.config).refusal(token)).toBeUndefined();
    expect((await exchange(stack.baseUrl, token, { headers: { origin: stack.baseUrl } })).status).toBe(303);
  });

  it('the exchange takes the token from the body only, and a link is exchanged by no other method', async () => {
    const token = await operatorToken('ops-body');
    const inUrl = await fetch(`${stack.baseUrl}/admin/queues/sign-in?token=${token}`, { method: 'POST', redirect: 'manual', headers: ownPage() });
    expect(inUrl.status).toBe(400);
    expect(inUrl.headers.get('set-cookie')).toBeNull();
    const onLink = await fetch(`${stack.baseUrl}/admin/queues?token=${token}`, { method: 'POST', redirect: 'manual', headers: ownPage() });
    expect(onLink.status).toBe(405);
    expect(onLink.headers.get('set-cookie')).toBeNull();
    expect((await fetch(`${stack.baseUrl}/admin/queues/sign-in`, { redirect: 'manual' })).status).toBe(405);
    expect((await exchange(stack.baseUrl, 'not-a-jwt')).status).toBe(401);
    // A forged form with more fields than the page's two: 413 problem+json whose code says so (not bad_request), nothing used up.
    const crowded = await fetch(`${stack.baseUrl}/admin/queues/sign-in`, {
      method: 'POST',
      redirect: 'manual',
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...ownPage() },
      body: `a=1&b=2&c=3&d=4&token=${token}`,
    });
    expect(crowded.status).toBe(413);
    expect(crowded.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(await crowded.json()).toMatchObject({ status: 413, title: 'Content Too Large', code: 'payload_too_large' });
    expect(crowded.headers.get('set-cookie')).toBeNull();
    expect(await operatorSessions(stack.redis, stack.config).refusal(token)).toBeUndefined();
    expect((await exchange(stack.baseUrl, token)).status).toBe(303);
  });
});

describe('the ?token= link works once', () => {
  it('a second exchange of the same link is refused, while the session it started keeps working', async () => {
    const token = await operatorToken('ops-link');
    const first = await exchange(stack.baseUrl, token);
    expect(first.status).toBe(303);
    for (const base of [stack.baseUrl, other!.baseUrl]) {
      for (const replay of [await visit(base, token), await exchange(base, token)]) {
        expect(replay.status, base).toBe(401);
        expect(replay.contentType).toContain('application/problem+json');
        expect(replay.text).toContain('used already');
        expect(replay.setCookie).toBeNull();
      }
    }
    expect((await get(other!.baseUrl, sessionCookie(first.setCookie))).status).toBe(200);
    // A new token makes a new link.
    expect((await exchange(stack.baseUrl, await operatorToken('ops-link'))).status).toBe(303);
  });

  it('a used link is refused however its signature is spelled', async () => {
    const token = await operatorToken('ops-link-spelling');
    expect((await exchange(stack.baseUrl, token)).status).toBe(303);
    for (const copy of spellings(token)) {
      for (const replay of [await visit(stack.baseUrl, encodeURIComponent(copy)), await exchange(stack.baseUrl, copy)]) {
        expect(replay.status, copy.slice(-6)).toBe(401);
        expect(replay.setCookie).toBeNull();
      }
    }
  });

  it('a token whose exp has a fraction of a second (a NumericDate may) signs in once by link and signs out', async () => {
    const token = await noJtiToken('ops-fraction', Math.floor(Date.now() / 1000) + 600.5);
    expect((await visit(stack.baseUrl, token)).status).toBe(200);
    const first = await exchange(stack.baseUrl, token);
    expect(first.status, first.text).toBe(303);
    // Max-Age takes whole seconds only: a browser ignores any other, and the cookie would outlive the token.
    expect(first.setCookie).toMatch(/; Max-Age=\d+(;|$)/);
    expect((await exchange(stack.baseUrl, token)).status).toBe(401);
    const session = sessionCookie(first.setCookie);
    const out = await api(stack, 'POST', '/admin/queues/logout', { headers: { ...session, ...ownPage() } });
    expect(out.status, out.text).toBe(200);
    expect(out.text).toContain('The token is revoked');
    expect((await get(stack.baseUrl, session)).status).toBe(401);
  });

  it('a link whose token has whitespace around it is refused (401) and not used up', async () => {
    // jose decodes a signature with a trailing newline, but the cookie could not carry it (a header
    // holds no line break): it was a 500 after the link was claimed.
    const token = await operatorToken('ops-link-space');
    for (const odd of [`${token}\n`, `${token}\t`, ` ${token}`]) {
      for (const res of [await visit(stack.baseUrl, encodeURIComponent(odd)), await exchange(stack.baseUrl, odd)]) {
        expect(res.status, JSON.stringify(odd.slice(-2))).toBe(401);
        expect(res.setCookie).toBeNull();
      }
    }
    expect((await exchange(stack.baseUrl, token)).status).toBe(303);
  });

  it('of exchanges arriving together, exactly one exchanges the link', async () => {
    const token = await operatorToken('ops-race');
    const statuses = await Promise.all(Array.from({ length: 8 }, (_, i) => exchange(i % 2 ? other!.baseUrl : stack.baseUrl, token).then((r) => r.status)));
    expect(statuses.filter((s) => s === 303)).toHaveLength(1);
    expect(statuses.filter((s) => s === 401)).toHaveLength(7);
  });

  it('a link refused for its role is not used up', async () => {
    const token = await stack.token({ tenantId: newTenant(), sub: 'tenant-admin', roles: ['admin'] });
    expect((await visit(stack.baseUrl, token)).status).toBe(403);
    expect((await exchange(stack.baseUrl, token)).status).toBe(403);
    expect((await exchange(stack.baseUrl, token)).status).toBe(403);
  });
});

describe('a ?token= link trades its token for a server-side session', () => {
  it('the cookie holds an opaque session id, never the JWT; the session works on every API process', async () => {
    const token = await operatorToken('ops-session');
    const first = await exchange(stack.baseUrl, token);
    expect(first.status, first.text).toBe(303);
    expect(first.setCookie).toMatch(new RegExp(`^${ADMIN_COOKIE}=[A-Za-z0-9_-]{43}; Path=/admin/queues; HttpOnly; SameSite=Strict; Max-Age=\\d+$`));
    const session = sessionCookie(first.setCookie);
    const id = session.cookie.slice(ADMIN_COOKIE.length + 1);
    expect(id).not.toBe(token);
    expect(token).not.toContain(id);
    for (const base of [stack.baseUrl, other!.baseUrl]) {
      expect((await get(base, session)).status, base).toBe(200);
      const json = await fetch(`${base}/admin/queues/api/queues`, { headers: session });
      expect(json.status, base).toBe(200);
    }
    // Redis keeps the id's hash, not the id: reading Redis gives no cookie to present.
    expect(await stack.redis.exists(sessionKey(session))).toBe(1);
    expect(await stack.redis.keys(`*${id}*`)).toEqual([]);
  });

  it('the exchanged token is refused from then on as a bearer header, a cookie and a link, on every API process', async () => {
    const token = await operatorToken('ops-exchanged');
    // Before the exchange, a tool may use the token (and the other process remembers it, ADR 0006).
    expect((await get(other!.baseUrl, { authorization: `Bearer ${token}` })).status).toBe(200);
    const session = await signIn(stack.baseUrl, token);
    for (const base of [stack.baseUrl, other!.baseUrl]) {
      const bearer = await get(base, { authorization: `Bearer ${token}` });
      expect(bearer.status, `${base} bearer`).toBe(401);
      expect(bearer.contentType).toContain('application/problem+json');
      expect(bearer.text).toContain('?token=');
      expect((await fetch(`${base}/admin/queues/api/queues`, { headers: { authorization: `Bearer ${token}` } })).status, `${base} api`).toBe(401);
      expect((await get(base, cookieOf(token))).status, `${base} cookie`).toBe(401);
      // However its signature is spelled.
      for (const copy of spellings(token)) expect((await get(base, { authorization: `Bearer ${copy}` })).status, copy.slice(-6)).toBe(401);
      expect((await visit(base, token)).status, `${base} link`).toBe(401);
      expect((await exchange(base, token)).status, `${base} exchange`).toBe(401);
      expect((await get(base, session)).status, `${base} session`).toBe(200);
    }
  });

  it("a tool's bearer token that was never exchanged keeps working, request after request", async () => {
    const token = await operatorToken('ops-tool-only');
    for (const base of [stack.baseUrl, other!.baseUrl, stack.baseUrl]) expect((await get(base, { authorization: `Bearer ${token}` })).status, base).toBe(200);
  });

  it("signing out a link's token (a tool's bearer header) ends the session that link started, on every API process", async () => {
    // The link leaked and someone else exchanged it first; the operator, refused with 401, signs its token out.
    const token = await operatorToken('ops-leaked');
    const theirs = await signIn(other!.baseUrl, token);
    expect((await exchange(stack.baseUrl, token)).status).toBe(401);
    const out = await api(stack, 'POST', '/admin/queues/logout', { token });
    expect(out.status, out.text).toBe(200);
    expect(out.text).toContain('The token is revoked');
    for (const base of [stack.baseUrl, other!.baseUrl]) expect((await get(base, theirs)).status, base).toBe(401);
    expect(await stack.redis.exists(sessionKey(theirs))).toBe(0);
  });

  it("a new link in the same browser ends that browser's previous session: its sign-out leaves none behind", async () => {
    // The new cookie replaces the old one in the browser, but the old session lived on in Redis (up to
    // 8 h) for any copy of its id, out of reach of the sign-out, which ends only the cookie it is sent.
    const first = await signIn(stack.baseUrl, await operatorToken('ops-relink'));
    const token = await operatorToken('ops-relink');
    const link = await exchange(stack.baseUrl, token, { headers: { ...ownPage(), ...first } });
    expect(link.status).toBe(303);
    const second = sessionCookie(link.setCookie);
    expect(second).not.toEqual(first);
    for (const base of [stack.baseUrl, other!.baseUrl]) {
      expect((await get(base, first)).status, `${base} previous`).toBe(401);
      expect((await get(base, second)).status, `${base} new`).toBe(200);
    }
    expect(await stack.redis.exists(sessionKey(first))).toBe(0);
    // A refused link (used already) ends nothing.
    const replay = await exchange(stack.baseUrl, token, { headers: { ...ownPage(), ...second } });
    expect(replay.status).toBe(401);
    expect((await get(stack.baseUrl, second)).status).toBe(200);
  });

  it('a forged or guessed session id, or a JWT in the cookie, is refused (401) and written nowhere', async () => {
    const session = await signIn(stack.baseUrl, await operatorToken('ops-guess'));
    const id = session.cookie.slice(ADMIN_COOKIE.length + 1);
    const before = (await stack.redis.keys(`${stack.prefix}:operator-session:*`)).sort();
    const flipped = `${id.slice(0, -1)}${id.endsWith('A') ? 'B' : 'A'}`;
    // The key Redis holds the session under is no id for it.
    const keyHash = sessionKey(session).split(':').at(-1)!;
    const forged = [randomBytes(32).toString('base64url'), flipped, keyHash, `${id}A`, id.slice(0, -1), await operatorToken('ops-guess-jwt')];
    for (const value of forged) {
      const res = await get(stack.baseUrl, { cookie: `${ADMIN_COOKIE}=${value}` });
      expect(res.status, value).toBe(401);
      expect(res.contentType).toContain('application/problem+json');
    }
    expect((await stack.redis.keys(`${stack.prefix}:operator-session:*`)).sort()).toEqual(before);
    expect((await get(stack.baseUrl, session)).status).toBe(200);
  });

  it('the session lasts as long as the token, at most 8 h (the Redis TTL and the cookie Max-Age alike)', async () => {
    for (const [ttlSeconds, most] of [[600, 600], [24 * 3600, 8 * 3600]] as const) {
      const token = await signDevToken(stack.config, { tenantId: newTenant(), sub: 'ops-ttl', roles: [OPERATOR_ROLE], ttlSeconds });
      const link = await exchange(stack.baseUrl, token);
      expect(link.status).toBe(303);
      const maxAge = Number(/; Max-Age=(\d+)/.exec(link.setCookie ?? '')?.[1]);
      expect(maxAge).toBeLessThanOrEqual(most);
      expect(maxAge).toBeGreaterThan(most - 60);
      const ttl = await stack.redis.ttl(sessionKey(sessionCookie(link.setCookie)));
      expect(ttl).toBeGreaterThan(0);
      expect(ttl).toBeLessThanOrEqual(maxAge);
    }
  });

  it('a session ends when its token expires: refused, and gone from Redis', { timeout: 90_000 }, async () => {
    // 20 s: the sign-in and the first request must fall inside the token's life on a loaded CI machine
    // (at least 10 s to spare), and the wait for its end stays well inside the deadline below.
    const token = await signDevToken(stack.config, { tenantId: newTenant(), sub: 'ops-short', roles: [OPERATOR_ROLE], ttlSeconds: 20 });
    const session = await signIn(stack.baseUrl, token);
    expect((await get(other!.baseUrl, session)).status).toBe(200);
    await waitFor(async () => (await get(other!.baseUrl, session)).status === 401, { timeoutMs: 60_000, intervalMs: 250, what: 'the session to end with its token' });
    expect(await stack.redis.exists(sessionKey(session))).toBe(0);
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
      const link = await signDevToken(stack.config, { tenantId: newTenant(), sub: 'ops-skew-link', roles: [OPERATOR_ROLE], ttlSeconds: 600 });
      await sessions.revoke(token);
      expect(await sessions.refusal(token)).toBe('revoked');
      expect(await sessions.exchange(token, 600)).toBe('revoked');
      const session = await sessions.exchange(link, 600);
      expect(session).toMatchObject({ id: expect.stringMatching(/^[A-Za-z0-9_-]{43}$/) });
      expect(await sessions.exchange(link, 600)).toBe('used');
      expect(await sessions.refusal(link)).toBe('exchanged');
      expect(await sessions.tokenOf((session as { id: string }).id)).toBe(link);
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

  it('answers 503 to a valid token (header, cookie, link, exchange) and to a sign-out, and sets no cookie; works again once Redis is back', async () => {
    const token = await down.token({ tenantId: newTenant(), sub: 'ops-down', roles: [OPERATOR_ROLE] });
    const link = await down.token({ tenantId: newTenant(), sub: 'ops-down-link', roles: [OPERATOR_ROLE] });
    const session = await signIn(down.baseUrl, await down.token({ tenantId: newTenant(), sub: 'ops-down-session', roles: [OPERATOR_ROLE] }));
    expect((await get(down.baseUrl, { authorization: `Bearer ${token}` })).status).toBe(200);
    await down.ownRedis!.stopServer();
    try {
      await waitFor(async () => (await api(down, 'GET', '/readyz')).status === 503, { timeoutMs: 30_000, what: 'the API to see Redis down' });
      for (const headers of [{ authorization: `Bearer ${token}` }, session]) {
        const res = await get(down.baseUrl, headers);
        expect(res.status, res.text).toBe(503);
        expect(res.contentType).toContain('application/problem+json');
      }
      for (const viaLink of [await visit(down.baseUrl, link), await exchange(down.baseUrl, link)]) {
        expect(viaLink.status).toBe(503);
        expect(viaLink.setCookie).toBeNull();
      }
      // The operator API asks the same records (ADR 0017, amendment): fails closed too, a retryable 503.
      for (const [method, path] of [['GET', '/api/v1/operator/tenant-limits'], ['PUT', `/api/v1/operator/tenants/${newTenant()}/limits`]] as const) {
        const res = await api(down, method, path, { token, body: method === 'PUT' ? { max_active_runs: null, max_runs_in_flight: 1 } : undefined, headers: method === 'PUT' ? { 'Idempotency-Key': randomUUID() } : {} });
        expect(res.status, `${method} ${path}: ${res.text}`).toBe(503);
        expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
        expect(Number(res.headers.get('retry-after'))).toBeGreaterThan(0);
      }
      // A tenant's token is not looked up: its read needs no Redis.
      expect((await api(down, 'GET', '/api/v1/golden-path/runs', { token: await down.token({ tenantId: newTenant(), sub: 'tenant-user', roles: ['approver'] }) })).status).toBe(200);
      const out = await fetch(`${down.baseUrl}/admin/queues/logout`, { method: 'POST', headers: session });
      expect(out.status).toBe(503);
      expect(out.headers.get('set-cookie')).toBeNull();
    } finally {
      await down.ownRedis!.startServer();
    }
    await waitFor(async () => (await get(down.baseUrl, { authorization: `Bearer ${token}` })).status === 200, { timeoutMs: 30_000, what: 'the dashboard back with Redis' });
    // The server came back empty (no persistence): the session went with its data, as every Redis flush ends them.
    expect((await get(down.baseUrl, session)).status).toBe(401);
    expect((await exchange(down.baseUrl, link)).status).toBe(303);
  });
});
