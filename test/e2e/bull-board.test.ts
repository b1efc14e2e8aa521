import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { api, CLASS_A_SUBMISSION, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { boardQueues } from '../../src/platform/http/admin-board.ts';
import { ADMIN_COOKIE, ADMIN_HOST_COOKIE, OPERATOR_ROLE } from '../../src/platform/http/admin-auth.middleware.ts';

/**
 * The operator dashboard in a real browser: headless Chromium (Debian's package) driven by
 * playwright-core against the real API and a real worker.
 */
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const OPERATOR = { user: 'operator', password: 'operator-password-1' };
let stack: TestStack;
let browser: BrowserContext;
let profile: string;
let adminToken: string;
const tenant = newTenant();
/** A new operator token for a `?token=` link, which works once. */
const signInToken = () => stack.token({ tenantId: newTenant(), sub: 'operator-1', roles: [OPERATOR_ROLE] });
const runIds: string[] = [];

/**
 * What the dashboard answers when `page` opens a page on another origin (same site: another port of
 * 127.0.0.1, as a sibling subdomain would be in production) that submits `form` to `target` at once.
 */
async function postedFromAnotherOrigin(page: Page, target: string, form: string): Promise<{ status: number; text: string }> {
  const evil = http.createServer((_req, res) => {
    res.setHeader('content-type', 'text/html');
    res.end(`${form}<script>document.forms[0].submit()</script>`);
  });
  await new Promise<void>((resolve) => evil.listen(0, '127.0.0.1', resolve));
  try {
    const answered = page.waitForResponse((r) => r.url() === target, { timeout: 30_000 });
    await page.goto(`http://127.0.0.1:${(evil.address() as import('node:net').AddressInfo).port}/`, { waitUntil: 'commit' });
    const res = await answered;
    return { status: res.status(), text: await res.text() };
  } finally {
    evil.closeAllConnections();
    await new Promise((r) => evil.close(r));
  }
}

/**
 * Signs `page` in as an operator does: opens the `?token=` link (a page that uses nothing up, which a
 * chat's link preview may have opened before), presses its *Sign in* button (a POST of the token from
 * the page's own origin), and lands on the dashboard URL the link named, without the token.
 */
async function signInWith(page: Page, token: string, path = '/admin/queues?'): Promise<void> {
  const link = await page.goto(`${stack.baseUrl}${path}token=${token}`);
  expect(link?.status()).toBe(200);
  expect(link?.headers()['cache-control']).toBe('no-store');
  expect(await browser.cookies()).not.toContainEqual(expect.objectContaining({ name: ADMIN_COOKIE }));
  const landed = page.waitForURL((url) => url.pathname !== '/admin/queues/sign-in' && !url.search.includes('token'), { timeout: 30_000 });
  await page.getByRole('button', { name: 'Sign in' }).click();
  await landed;
}

beforeAll(async () => {
  stack = await startStack({ env: { OPERATOR_USER: OPERATOR.user, OPERATOR_PASSWORD: OPERATOR.password } });
  await stack.spawnWorker();
  adminToken = await stack.token({ tenantId: newTenant(), sub: 'operator-1', roles: [OPERATOR_ROLE] });
  const submitter = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
  for (const body of [CLASS_A_SUBMISSION, SAMPLE_SUBMISSION]) {
    const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token: submitter, body, headers: { 'Idempotency-Key': randomUUID() } });
    runIds.push(res.json.run_id);
  }
  await waitFor(async () => {
    const states = await Promise.all(runIds.map(async (id) => (await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token: submitter })).json?.status));
    return states[0] === 'completed' && states[1] === 'waiting';
  }, { timeoutMs: 60_000, what: 'one completed and one waiting run' });
  profile = mkdtempSync(join(tmpdir(), 'dealix-chromium-'));
  // A fresh profile per run (playwright passes it as --user-data-dir).
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1440, height: 900 },
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}, 120_000);

afterAll(async () => {
  await browser?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
  await stack?.stop();
});

describe('Bull Board at /admin/queues', () => {
  it('refuses requests without operator credentials: 401 without any, 403 without the operator role', async () => {
    await browser.clearCookies();
    const page = await browser.newPage();
    const res = await page.goto(`${stack.baseUrl}/admin/queues`);
    expect(res?.status()).toBe(401);
    await page.close();
    for (const path of ['/admin/queues', '/admin/queues/api/queues']) {
      const none = await api(stack, 'GET', path);
      expect(none.status).toBe(401);
      expect(none.headers.get('content-type')).toContain('application/problem+json');
      expect(none.headers.get('www-authenticate')).toContain('Basic realm=');
    }
    const user = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
    expect((await api(stack, 'GET', '/admin/queues', { token: user })).status).toBe(403);
    expect((await api(stack, 'GET', `/admin/queues?token=${user}`)).status).toBe(403);
    // A tenant's own admin (who manages its approval policy) is not an operator: the board shows
    // every tenant's jobs and submissions, so it answers 403 and shows nothing.
    const tenantAdmin = await stack.token({ tenantId: tenant, sub: 'tenant-admin-1', roles: ['admin', 'approver'] });
    for (const path of ['/admin/queues', '/admin/queues/api/queues?activeQueue=golden-path&status=completed&page=1&jobsPerPage=50']) {
      const res = await api(stack, 'GET', path, { token: tenantAdmin });
      expect(res.status).toBe(403);
      expect(res.headers.get('content-type')).toContain('application/problem+json');
      expect(res.text).not.toContain(tenant);
    }
    expect((await api(stack, 'GET', `/admin/queues?token=${tenantAdmin}`)).status).toBe(403);
    expect((await api(stack, 'GET', '/admin/queues', { headers: { authorization: 'Bearer not.a.jwt' } })).status).toBe(401);
    const basic = (user: string, password: string) => ({ authorization: `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}` });
    expect((await api(stack, 'GET', '/admin/queues', { headers: basic(OPERATOR.user, 'wrong-password-1') })).status).toBe(401);
    expect((await api(stack, 'GET', '/admin/queues', { headers: basic(OPERATOR.user, OPERATOR.password) })).status).toBe(200);
    const board = await api(stack, 'GET', '/admin/queues', { token: adminToken });
    expect(board.status).toBe(200);
    // The board is an Express app of its own; it must not advertise the framework either.
    expect(board.headers.get('x-powered-by')).toBeNull();
  });

  it('the ?token= sign-in page sends the browser on only within the dashboard, whatever the raw path says', async () => {
    // Sent raw: fetch would resolve the dot segments itself. The path reaches the dashboard's mount,
    // and resolving it naively would send the browser to //evil.example/x, another host.
    const raw = (path: string) =>
      new Promise<{ status: number; next: string | undefined }>((resolve, reject) => {
        const url = new URL(stack.baseUrl);
        http.get({ host: url.hostname, port: url.port, path }, (res) => {
          let body = '';
          res.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, next: /name="next" value="([^"]*)"/.exec(body)?.[1] }));
        }).on('error', reject);
      });
    const hostile = await raw(`/admin/queues/../..//evil.example/x?token=${await signInToken()}`);
    expect(hostile).toEqual({ status: 200, next: '/admin/queues' });
    const plain = await raw(`/admin/queues/queue/golden-path?status=completed&token=${await signInToken()}`);
    expect(plain).toEqual({ status: 200, next: '/admin/queues/queue/golden-path?status=completed' });
  });

  it('registers every workflow queue, the timers queue, the maintenance queue and the webhooks queue, read-only by default', async () => {
    const expected = [...new Set([...stack.container.workflows.map((w) => w.queue), 'timers', 'maintenance', 'webhooks'])].sort();
    const res = await api(stack, 'GET', '/admin/queues/api/queues', { token: adminToken });
    expect(res.status).toBe(200);
    const queues = res.json.queues as Array<{ name: string; readOnlyMode: boolean }>;
    expect(queues.map((q) => q.name).sort()).toEqual(expected);
    expect(queues.every((q) => q.readOnlyMode)).toBe(true);
    // Read-only: an operator can look, not pause, retry or clean.
    expect((await api(stack, 'PUT', '/admin/queues/api/queues/golden-path/pause', { token: adminToken })).status).toBe(405);
    expect(await stack.container.queues.get('golden-path')!.isPaused()).toBe(false);
  });

  it('a browser signs in once with ?token= and its button, sees the golden-path queue and its jobs (screenshot in artifacts/)', async () => {
    const context = browser;
    await context.clearCookies();
    const page = await context.newPage();
    const token = await signInToken();
    // A chat's link preview fetched the link first: it used nothing up.
    for (let i = 0; i < 3; i++) expect((await fetch(`${stack.baseUrl}/admin/queues?token=${token}`, { redirect: 'manual' })).status).toBe(200);
    await signInWith(page, token);
    // The token left the URL; an HttpOnly, SameSite=Strict cookie carries a session id (never the token) from now on.
    expect(new URL(page.url()).pathname).toBe('/admin/queues');
    expect(new URL(page.url()).search).toBe('');
    const cookie = (await context.cookies()).find((c) => c.name === ADMIN_COOKIE);
    expect(cookie).toMatchObject({ httpOnly: true, sameSite: 'Strict', path: '/admin/queues' });
    expect(cookie!.value).toMatch(/^[A-Za-z0-9_-]{43}$/);
    // The token was the link's: a tool that read it from the history gets nothing.
    expect((await api(stack, 'GET', '/admin/queues', { token })).status).toBe(401);
    await page.getByText('golden-path', { exact: false }).first().waitFor({ timeout: 30_000 });
    // The board's own actions, as the browser sends them (Sec-Fetch-Site, Origin), pass the guard's
    // cross-origin check: read-only refuses them with 405, where another site's would get 403.
    const action = await page.evaluate(async () => (await fetch('/admin/queues/api/queues/golden-path/pause', { method: 'PUT' })).status);
    expect(action).toBe(405);

    await page.goto(`${stack.baseUrl}/admin/queues/queue/golden-path?status=completed`);
    // One run job per run (ADR 0005), named by the step it starts at, its data naming the run.
    await page.getByText('partner-dossier').first().waitFor({ timeout: 30_000 });
    for (const id of runIds) await page.getByText(id).first().waitFor({ timeout: 30_000 });
    // For a person to look at (artifacts/ is not committed); docs/images/bull-board.png is updated by
    // hand from it, never by a test run.
    mkdirSync(join(ROOT, 'artifacts'), { recursive: true });
    await page.screenshot({ path: join(ROOT, 'artifacts/bull-board.png') });
    await page.close();
  });

  it("a page on another origin cannot make a signed-in operator's browser act on the board (CSRF)", async () => {
    // Same site, another origin (another port of 127.0.0.1: a sibling subdomain in production): the
    // browser sends the SameSite=Strict cookie with its form. Bull Board's POST …/add needs no preflight.
    await browser.clearCookies();
    const page = await browser.newPage();
    try {
      await signInWith(page, await signInToken());
      const target = `${stack.baseUrl}/admin/queues/api/queues/golden-path/add`;
      const res = await postedFromAnotherOrigin(page, target, `<form method="post" enctype="text/plain" action="${target}"><input name='{"name":"forged","x":"' value='"}'></form>`);
      // Reaching the board would be 405 (read-only) or 200 (writes on); the guard refuses it first.
      expect(res.status).toBe(403);
      // Refused as coming from another origin, with the operator's cookie (not for a missing credential).
      expect(res.text).toContain('must come from the dashboard itself');
    } finally {
      await page.close();
    }
  });

  it("a page on another origin cannot sign the operator's browser in with its own token (login CSRF)", async () => {
    // Same site, another origin: the attacker's page posts the sign-in form with the attacker's token,
    // which would sign the operator in as the attacker (what they then do on the board, the attacker sees).
    await browser.clearCookies();
    const page = await browser.newPage();
    const attackers = await signInToken();
    const target = `${stack.baseUrl}/admin/queues/sign-in`;
    try {
      const res = await postedFromAnotherOrigin(page, target, `<form method="post" action="${target}"><input type="hidden" name="token" value="${attackers}"></form>`);
      expect(res.status).toBe(403);
      expect(res.text).toContain('must come from the dashboard itself');
      expect((await browser.cookies()).find((c) => c.name === ADMIN_COOKIE)).toBeUndefined();
      // Nothing used up: the token's own page still signs in.
      await signInWith(page, attackers);
      expect((await browser.cookies()).find((c) => c.name === ADMIN_COOKIE)).toBeDefined();
    } finally {
      await page.close();
    }
  });

  it("a browser signs out from the board's menu: the cookie is gone and its session ended, a new link signs in again", async () => {
    await browser.clearCookies();
    const token = await signInToken();
    const page = await browser.newPage();
    try {
      await signInWith(page, token);
      await page.getByText('golden-path', { exact: false }).first().waitFor({ timeout: 30_000 });
      const session = (await browser.cookies()).find((c) => c.name === ADMIN_COOKIE)!.value;
      expect((await api(stack, 'GET', '/admin/queues', { headers: { cookie: `${ADMIN_COOKIE}=${session}` } })).status).toBe(200);
      // Bull Board's header menu (uiConfig.miscLinks) → the guard's confirmation form → POST.
      await page.locator('header ul li').last().locator('button').click({ timeout: 30_000 });
      await page.getByText('Sign out', { exact: true }).click({ timeout: 30_000 });
      await page.waitForURL(`${stack.baseUrl}/admin/queues/logout`, { timeout: 30_000 });
      const posted = page.waitForResponse((r) => r.url() === `${stack.baseUrl}/admin/queues/logout` && r.request().method() === 'POST', { timeout: 30_000 });
      await page.getByRole('button', { name: 'Sign out' }).click();
      expect((await posted).status()).toBe(200);
      await page.getByText('Signed out of the operator dashboard', { exact: false }).waitFor({ timeout: 30_000 });
      expect((await browser.cookies()).find((c) => c.name === ADMIN_COOKIE)).toBeUndefined();
      // A copy of the cookie (another browser's) is refused as well: the session is over, not only forgotten here.
      expect((await api(stack, 'GET', '/admin/queues', { headers: { cookie: `${ADMIN_COOKIE}=${session}` } })).status).toBe(401);
      expect((await api(stack, 'GET', '/admin/queues', { token })).status).toBe(401);
      expect((await page.goto(`${stack.baseUrl}/admin/queues?token=${token}`))?.status()).toBe(401);
      await signInWith(page, await signInToken());
      expect((await browser.cookies()).find((c) => c.name === ADMIN_COOKIE)).toBeDefined();
    } finally {
      await page.close();
    }
  });

  it('over HTTPS (a believed proxy\'s X-Forwarded-Proto) the browser holds the __Host- cookie, sends it with the board\'s own requests, and signs out of it', async () => {
    // The default TRUST_PROXY believes a proxy on this host; the browser, on 127.0.0.1 (a potentially
    // trustworthy origin, where Chromium keeps Secure and __Host- cookies), sends the header itself.
    await browser.clearCookies();
    const page = await browser.newPage();
    await page.setExtraHTTPHeaders({ 'x-forwarded-proto': 'https' });
    try {
      await signInWith(page, await signInToken());
      const cookies = await browser.cookies();
      expect(cookies.find((c) => c.name === ADMIN_HOST_COOKIE)).toMatchObject({ httpOnly: true, secure: true, sameSite: 'Strict', path: '/', domain: '127.0.0.1' });
      expect(cookies.find((c) => c.name === ADMIN_COOKIE)).toBeUndefined();
      // The board's page and its API calls (Path=/ covers them) carry it.
      await page.getByText('golden-path', { exact: false }).first().waitFor({ timeout: 30_000 });
      // A plain-named cookie beside it (what a sibling subdomain can plant) is not read over HTTPS, and hides nothing.
      await browser.addCookies([{ name: ADMIN_COOKIE, value: 'A'.repeat(43), domain: '127.0.0.1', path: '/admin/queues', sameSite: 'Strict' }]);
      expect((await page.goto(`${stack.baseUrl}/admin/queues/api/queues`))?.status()).toBe(200);
      await page.goto(`${stack.baseUrl}/admin/queues/logout`);
      const posted = page.waitForResponse((r) => r.url() === `${stack.baseUrl}/admin/queues/logout` && r.request().method() === 'POST', { timeout: 30_000 });
      await page.getByRole('button', { name: 'Sign out' }).click();
      expect((await posted).status()).toBe(200);
      await page.getByText('Signed out of the operator dashboard', { exact: false }).waitFor({ timeout: 30_000 });
      // Both names deleted: the host's own and the plain one at the dashboard's path.
      expect((await browser.cookies()).filter((c) => c.name === ADMIN_HOST_COOKIE || c.name === ADMIN_COOKIE)).toEqual([]);
      expect((await page.goto(`${stack.baseUrl}/admin/queues/api/queues`))?.status()).toBe(401);
    } finally {
      await page.close();
    }
  });

  it("a browser's reload revalidates Bull Board's static files (304, no body) and fetches the page and its queue data afresh, none of them stored for a shared cache", async () => {
    await browser.clearCookies();
    const page = await browser.newPage();
    const seen: Array<{ path: string; status: number; cacheControl: string | undefined; etag: string | undefined; sentTag: boolean }> = [];
    page.on('response', async (r) => {
      const url = new URL(r.url());
      if (!url.pathname.startsWith('/admin/queues') || r.request().method() !== 'GET') return;
      const sent = await r.request().allHeaders();
      seen.push({ path: url.pathname, status: r.status(), cacheControl: r.headers()['cache-control'], etag: r.headers()['etag'], sentTag: 'if-none-match' in sent });
    });
    try {
      await signInWith(page, await signInToken());
      await page.getByText('golden-path').first().waitFor({ timeout: 30_000 });
      const beforeReload = seen.length;
      const polled = page.waitForResponse((r) => new URL(r.url()).pathname === '/admin/queues/api/queues', { timeout: 30_000 });
      await page.reload();
      await polled;
      await page.getByText('golden-path').first().waitFor({ timeout: 30_000 });
      const board = seen.filter((r) => r.path !== '/admin/queues/sign-in');
      for (const r of board) {
        expect(r.cacheControl, r.path).toBe(/^\/admin\/queues\/static\//.test(r.path) ? 'private, no-cache' : 'no-store');
        expect(r.etag, r.path).toMatch(/^W\//);
      }
      // The page and its JSON are never stored, so never sent back conditionally: each is a 200.
      for (const r of board.filter((x) => !x.path.startsWith('/admin/queues/static/'))) {
        expect(r.status, r.path).toBe(200);
        expect(r.sentTag, r.path).toBe(false);
      }
      // After the reload, the browser revalidated a script it had kept: a 304.
      const reloaded = seen.slice(beforeReload);
      expect(reloaded.some((r) => r.path.endsWith('.js') && r.sentTag && r.status === 304), JSON.stringify(reloaded)).toBe(true);
    } finally {
      await page.close();
    }
  });

  it('records its queues for the readiness matrix', async () => {
    const { createApp } = await import('../../src/app.ts');
    expect(boardQueues(createApp(stack.container)).sort()).toEqual([...stack.container.queues.keys()].sort());
  });
});
