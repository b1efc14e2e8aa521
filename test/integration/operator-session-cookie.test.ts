import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { ADMIN_COOKIE, ADMIN_HOST_COOKIE, OPERATOR_ROLE } from '../../src/platform/http/admin-auth.middleware.ts';
import { signDevToken } from '../../src/platform/tenancy/jwt.ts';
import { operatorSessions } from '../../src/platform/http/admin-board.ts';
import { newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { monitorKeys } from '../helpers/redis-monitor.ts';
import { postSignIn } from '../helpers/dashboard-sign-in.ts';

/**
 * The dashboard's session cookie is one per host (ADR 0017, amendment *one cookie per host*): over
 * HTTPS it is `__Host-dealix_admin_token` (`Secure`, `Path=/`, no `Domain`: a browser takes it only
 * from this very host, so a sibling subdomain cannot set or shadow it), and the plain name is not read
 * there; over plain HTTP the plain name works on a loopback host only (local development). A request
 * carrying several cookies of the name (a sibling's for the parent domain beside the host's own) is
 * let in when exactly one of them names an open session. And a session ends at its token's `exp`.
 *
 * HTTPS here is a TLS-terminating proxy on the same host: the stack believes loopback's
 * X-Forwarded-Proto (the default TRUST_PROXY), as it would a real proxy's.
 */
let stack: TestStack;
beforeAll(async () => {
  stack = await startStack();
});
afterAll(async () => stack?.stop());

const HTTPS = { 'x-forwarded-proto': 'https' } as const;
/** What the dashboard's own page sends with its sign-in form. */
const ownPage = { 'sec-fetch-site': 'same-origin' } as const;
const operatorToken = (sub: string) => stack.token({ tenantId: newTenant(), sub, roles: [OPERATOR_ROLE] });

/** Signs in through the proxy (HTTPS) or straight to 127.0.0.1 (plain HTTP): the Set-Cookie lines and the session id. */
async function signIn(token: string, secure: boolean, extra: Record<string, string> = {}) {
  const res = await postSignIn(stack.baseUrl, token, { headers: { ...ownPage, ...(secure ? HTTPS : {}), ...extra } });
  expect(res.status, res.text).toBe(303);
  const lines = res.headers.getSetCookie();
  const id = new RegExp(`^${secure ? ADMIN_HOST_COOKIE : ADMIN_COOKIE}=([A-Za-z0-9_-]{43});`).exec(lines[0] ?? '')?.[1];
  expect(id, lines.join(' | ')).toBeTruthy();
  return { lines, id: id! };
}

async function board(cookie: string, secure: boolean) {
  const res = await fetch(`${stack.baseUrl}/admin/queues/api/queues`, { headers: { cookie, ...(secure ? HTTPS : {}) } });
  return { status: res.status, text: await res.text() };
}

const sessionKey = (id: string) => `${stack.prefix}:operator-session:sid:${createHash('sha256').update(id).digest('base64url')}`;

describe('over HTTPS the session cookie is a __Host- cookie', () => {
  it('the sign-in sets __Host-…; Secure; Path=/; no Domain, and deletes the plain-named cookie of earlier versions', async () => {
    const { lines, id } = await signIn(await operatorToken('ops-host'), true);
    expect(lines[0]).toMatch(new RegExp(`^${ADMIN_HOST_COOKIE}=[A-Za-z0-9_-]{43}; Path=/; HttpOnly; SameSite=Strict; Max-Age=\\d+; Secure$`));
    expect(lines.join('\n')).not.toMatch(/domain=/i);
    expect(lines[1]).toBe(`${ADMIN_COOKIE}=; Path=/admin/queues; HttpOnly; SameSite=Strict; Max-Age=0; Secure`);
    expect((await board(`${ADMIN_HOST_COOKIE}=${id}`, true)).status).toBe(200);
  });

  it('over HTTPS only the __Host- name is read: the same id under the plain name (any sibling can set that one) is no session', async () => {
    const { id } = await signIn(await operatorToken('ops-host-only'), true);
    expect((await board(`${ADMIN_COOKIE}=${id}`, true)).status).toBe(401);
    // And a plain-HTTP request reads only the plain name (a browser sends no Secure cookie over HTTP anyway).
    expect((await board(`${ADMIN_HOST_COOKIE}=${id}`, false)).status).toBe(401);
    expect((await board(`${ADMIN_HOST_COOKIE}=${id}`, true)).status).toBe(200);
  });

  it('signing out over HTTPS deletes both cookies and ends the session', async () => {
    const { id } = await signIn(await operatorToken('ops-host-out'), true);
    const out = await fetch(`${stack.baseUrl}/admin/queues/logout`, { method: 'POST', headers: { cookie: `${ADMIN_HOST_COOKIE}=${id}`, ...HTTPS, ...ownPage } });
    expect(out.status).toBe(200);
    expect(out.headers.getSetCookie()).toEqual([
      `${ADMIN_HOST_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0; Secure`,
      `${ADMIN_COOKIE}=; Path=/admin/queues; HttpOnly; SameSite=Strict; Max-Age=0; Secure`,
    ]);
    expect(await stack.redis.exists(sessionKey(id))).toBe(0);
    expect((await board(`${ADMIN_HOST_COOKIE}=${id}`, true)).status).toBe(401);
  });
});

describe('several cookies of the name in one request', () => {
  for (const secure of [true, false]) {
    const name = secure ? ADMIN_HOST_COOKIE : ADMIN_COOKIE;
    it(`${secure ? 'HTTPS' : 'plain HTTP on localhost'}: a bogus duplicate (a sibling's, an ended session's) shadows no valid session, in either order`, async () => {
      const { id } = await signIn(await operatorToken('ops-dup'), secure);
      const ended = (await signIn(await operatorToken('ops-dup-ended'), secure)).id;
      await stack.redis.del(sessionKey(ended));
      const bogus = [randomBytes(32).toString('base64url'), ended, await operatorToken('ops-dup-jwt'), 'x', '%E0%A4%A'];
      for (const other of bogus) {
        for (const cookie of [`${name}=${other}; ${name}=${id}`, `${name}=${id}; ${name}=${other}`, `a=1; ${name}=${other}; b=2; ${name}=${id}; ${name}=${other}`]) {
          const res = await board(cookie, secure);
          expect(res.status, `${cookie}: ${res.text}`).toBe(200);
        }
      }
      // Bogus ones alone sign nothing in.
      expect((await board(bogus.slice(0, 3).map((v) => `${name}=${v}`).join('; '), secure)).status).toBe(401);
    });

    it(`${secure ? 'HTTPS' : 'plain HTTP on localhost'}: two open sessions in one request (one planted: session fixation) sign nothing in; signing out ends both`, async () => {
      const mine = (await signIn(await operatorToken('ops-fix-mine'), secure)).id;
      const planted = (await signIn(await operatorToken('ops-fix-attacker'), secure)).id;
      for (const cookie of [`${name}=${planted}; ${name}=${mine}`, `${name}=${mine}; ${name}=${planted}`]) {
        const res = await board(cookie, secure);
        expect(res.status, cookie).toBe(401);
        expect(res.text).toContain('more than one');
      }
      const out = await fetch(`${stack.baseUrl}/admin/queues/logout`, { method: 'POST', headers: { cookie: `${name}=${planted}; ${name}=${mine}`, ...ownPage, ...(secure ? HTTPS : {}) } });
      expect(out.status).toBe(200);
      for (const id of [mine, planted]) {
        expect(await stack.redis.exists(sessionKey(id))).toBe(0);
        expect((await board(`${name}=${id}`, secure)).status).toBe(401);
      }
    });
  }

  it("a new sign-in ends every session the browser's cookies named", async () => {
    const first = (await signIn(await operatorToken('ops-relink-a'), true)).id;
    const second = (await signIn(await operatorToken('ops-relink-b'), true)).id;
    const legacy = (await signIn(await operatorToken('ops-relink-legacy'), false)).id;
    const { id } = await signIn(await operatorToken('ops-relink-c'), true, { cookie: `${ADMIN_HOST_COOKIE}=${first}; ${ADMIN_HOST_COOKIE}=${second}; ${ADMIN_COOKIE}=${legacy}` });
    for (const old of [first, second, legacy]) expect(await stack.redis.exists(sessionKey(old))).toBe(0);
    expect((await board(`${ADMIN_HOST_COOKIE}=${id}`, true)).status).toBe(200);
  });
});

describe('a request with more cookies of the name than a browser holds looks up a bounded number', () => {
  // A browser holds one per host, parent domain and path that set one (over HTTPS, one: `__Host-`).
  // A client sends what it likes, up to Node's header limit (or more, under --max-http-header-size):
  // hundreds of session ids, each a Redis key to read or delete for an unauthenticated request.
  const many = (name: string, n: number) => Array.from({ length: n }, () => `${name}=${randomBytes(32).toString('base64url')}`);
  const keysPerCommand = (seen: readonly string[], command: string) => seen.filter((c) => c.toLowerCase().startsWith(`${command} `)).map((c) => c.split(' ').length - 1);

  it('more than 8 session ids of the name: refused (401) without reading Redis; 8, one of them open, still let in', async () => {
    const { id } = await signIn(await operatorToken('ops-many'), true);
    const monitor = await monitorKeys(`${stack.prefix}:operator-session:sid:`);
    try {
      const crowded = await board([...many(ADMIN_HOST_COOKIE, 100), `${ADMIN_HOST_COOKIE}=${id}`].join('; '), true);
      expect(crowded.status, crowded.text).toBe(401);
      expect((await board([...many(ADMIN_HOST_COOKIE, 7), `${ADMIN_HOST_COOKIE}=${id}`].join('; '), true)).status).toBe(200);
      await monitor.settle(stack.redis, `many-cookies-${randomBytes(4).toString('hex')}`);
      expect(keysPerCommand(monitor.seen, 'mget')).toEqual([8]);
    } finally {
      monitor.stop();
    }
  });

  it("sign-out ends at most 8 sessions, the host's own cookie's first, however many plain-named ones come before it", async () => {
    const { id } = await signIn(await operatorToken('ops-many-out'), true);
    const monitor = await monitorKeys(`${stack.prefix}:operator-session:sid:`);
    try {
      const cookie = [...many(ADMIN_COOKIE, 100), `${ADMIN_HOST_COOKIE}=${id}`].join('; ');
      const out = await fetch(`${stack.baseUrl}/admin/queues/logout`, { method: 'POST', headers: { cookie, ...HTTPS, ...ownPage } });
      expect(out.status).toBe(200);
      await monitor.settle(stack.redis, `many-out-${randomBytes(4).toString('hex')}`);
      expect(keysPerCommand(monitor.seen, 'getdel').length).toBe(8);
    } finally {
      monitor.stop();
    }
    expect(await stack.redis.exists(sessionKey(id))).toBe(0);
  });
});

describe('plain HTTP to a host other than loopback opens no session', () => {
  // A proxy that forwards the public Host but not the scheme (or a dashboard served without TLS):
  // the browser would hold a cookie that any sibling subdomain can shadow and the network can read.
  const publicHost = { 'x-forwarded-host': 'ops.example' };

  it('the link page and the sign-in answer 403 and use nothing up; the same link works over HTTPS', async () => {
    const token = await operatorToken('ops-plain');
    const page = await fetch(`${stack.baseUrl}/admin/queues?token=${token}`, { headers: publicHost });
    expect(page.status).toBe(403);
    expect(await page.text()).toContain('HTTPS');
    // Its URL holds the token: no answer to it is stored, a refusal no more than the page.
    expect(page.headers.get('cache-control')).toBe('no-store');
    expect(page.headers.get('content-security-policy')).toContain("frame-ancestors 'none'");
    expect(page.headers.get('referrer-policy')).toBe('no-referrer');
    const posted = await postSignIn(stack.baseUrl, token, { headers: { ...publicHost, ...ownPage, origin: 'http://ops.example' } });
    expect(posted.status, posted.text).toBe(403);
    expect(posted.setCookie).toBeNull();
    expect((await postSignIn(stack.baseUrl, token, { headers: { ...publicHost, ...HTTPS, ...ownPage } })).status).toBe(303);
  });

  it('a plain-named session cookie is not read there (401, saying why); a bearer header still works', async () => {
    const { id } = await signIn(await operatorToken('ops-plain-cookie'), false);
    const res = await fetch(`${stack.baseUrl}/admin/queues/api/queues`, { headers: { ...publicHost, cookie: `${ADMIN_COOKIE}=${id}` } });
    expect(res.status).toBe(401);
    expect(await res.text()).toContain('plain HTTP');
    const bearer = await fetch(`${stack.baseUrl}/admin/queues/api/queues`, { headers: { ...publicHost, authorization: `Bearer ${await operatorToken('ops-plain-tool')}` } });
    expect(bearer.status).toBe(200);
  });

  it('loopback names count as local: localhost, *.localhost, 127.0.0.0/8, [::1]', async () => {
    for (const host of ['localhost', 'dash.localhost', '127.0.0.2', '[::1]']) {
      const res = await postSignIn(stack.baseUrl, await operatorToken('ops-local'), { headers: { 'x-forwarded-host': host, ...ownPage } });
      expect(res.status, host).toBe(303);
      expect(res.setCookie, host).toMatch(new RegExp(`^${ADMIN_COOKIE}=`));
    }
  });
});

describe("a session ends no later than its token's exp", () => {
  it("its cookie's Max-Age and Redis expiry stop at exp, and it is refused as soon as exp has passed — not after the clock tolerance", { timeout: 120_000 }, async () => {
    // 30 s: enough for the sign-in and both sessions' first requests on a loaded CI machine (the
    // exchange needs a second of life left; a 200 after exp would be a wrong premise, not a defect).
    // The verifier accepts the token up to JWT_CLOCK_TOLERANCE past its exp; the session must not.
    const mint = () => signDevToken(stack.config, { tenantId: newTenant(), sub: 'ops-exp', roles: [OPERATOR_ROLE], ttlSeconds: 30 });
    const expOf = (token: string) => JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()).exp as number;
    const token = await mint();
    const exp = expOf(token);
    const before = Math.floor(Date.now() / 1000);
    const { lines, id } = await signIn(token, true);
    const after = Date.now();
    const maxAge = Number(/; Max-Age=(\d+)/.exec(lines[0]!)?.[1]);
    expect(maxAge).toBeGreaterThan(0);
    expect(before + maxAge).toBeLessThanOrEqual(exp);
    // Redis drops the key Max-Age seconds after it wrote it: within the sign-in's own duration of exp.
    const expiresAt = Number(await stack.redis.call('PEXPIRETIME', sessionKey(id)));
    expect(expiresAt).toBeGreaterThan(0);
    expect(expiresAt).toBeLessThanOrEqual(after + maxAge * 1000);
    // A session key that outlives its token (an hour: a Redis clock behind the API's, a key an older
    // version wrote) ends at the token's exp all the same.
    const long = await mint();
    const outliving = await operatorSessions(stack.redis, stack.config).exchange(long, 3600);
    if (typeof outliving === 'string') throw new Error(`exchange refused: ${outliving}`);
    expect(await stack.redis.ttl(sessionKey(outliving.id))).toBeGreaterThan(3000);
    for (const session of [id, outliving.id]) expect((await board(`${ADMIN_HOST_COOKIE}=${session}`, true)).status).toBe(200);
    // Until both tokens' exp has passed by this machine's clock (the API's: it runs in this process)…
    const end = Math.max(exp, expOf(long)) * 1000;
    await waitFor(() => Date.now() >= end, { timeoutMs: 60_000, intervalMs: 200, what: "the tokens' exp" });
    // …then refused at once, though the verifier would still accept the tokens for its tolerance.
    for (const session of [id, outliving.id]) {
      const res = await board(`${ADMIN_HOST_COOKIE}=${session}`, true);
      expect(res.status, res.text).toBe(401);
    }
    // And the key goes, Redis's expiry being at most the sign-in's duration past exp.
    await waitFor(async () => (await stack.redis.exists(sessionKey(id))) === 0, { timeoutMs: 30_000, what: 'the session key to expire' });
  });
});
