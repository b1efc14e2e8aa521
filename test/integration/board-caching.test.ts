import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { rawGet } from '../helpers/raw-http.ts';
import { OPERATOR_ROLE } from '../../src/platform/http/admin-auth.middleware.ts';
import { OTHER_ORIGINS, postSignIn, sessionCookieOf } from '../helpers/dashboard-sign-in.ts';

/**
 * Bull Board's answers as a browser and a cache see them, since Express's own ETag setting is off
 * (app.ts) and readETags (etag.ts) tags a GET's 2xx: the page, Bull Board's static files and its JSON
 * API load and revalidate (a 304 without a body, never for a changed queue), nothing carrying queue or
 * job data may be stored by a cache (Cache-Control: no-store), a conditional request without a valid
 * session gets no 304, and the board's writes carry no ETag. Conditional requests go by node:http
 * (rawGet): fetch adds `Cache-Control: no-cache` to them, which makes any server answer in full.
 */
const OPERATOR = { user: 'operator', password: 'operator-password-1' };
const basic = { authorization: `Basic ${Buffer.from(`${OPERATOR.user}:${OPERATOR.password}`).toString('base64')}` };
const QUEUES = '/admin/queues/api/queues?page=1&jobsPerPage=10';
const queue = 'maintenance';

let stack: TestStack;
/** An operator browser's session cookie (a `?token=` link exchanged). */
let cookie: string;
const ownPage = () => ({ 'sec-fetch-site': 'same-origin', origin: stack.baseUrl });
const url = (path: string) => `${stack.baseUrl}${path}`;

async function signIn(): Promise<string> {
  const link = await postSignIn(stack.baseUrl, await stack.token({ tenantId: newTenant(), sub: 'operator-1', roles: [OPERATOR_ROLE] }));
  expect(link.status).toBe(303);
  return sessionCookieOf(link.setCookie);
}

/** The first static file the page names (a script), as the browser loads it. */
async function staticAsset(): Promise<string> {
  const page = await rawGet(url('/admin/queues'), { cookie });
  const src = /<script[^>]+src="([^"]*static\/[^"]+\.js)"/.exec(page.text)?.[1];
  expect(src, page.text).toBeDefined();
  return new URL(src!, url('/admin/queues/')).pathname;
}

beforeAll(async () => {
  stack = await startStack({ env: { OPERATOR_USER: OPERATOR.user, OPERATOR_PASSWORD: OPERATOR.password, BULL_BOARD_READ_ONLY: 'false' } });
  cookie = await signIn();
});
afterAll(async () => {
  await stack?.container.queues.get(queue)?.resume();
  await stack?.stop();
});

describe('the board loads and revalidates', () => {
  it('serves its page, static files and JSON API to a signed-in browser; a revalidation of an unchanged one is a 304 without a body', async () => {
    const asset = await staticAsset();
    for (const path of ['/admin/queues', asset, QUEUES]) {
      const first = await rawGet(url(path), { cookie });
      expect(first.status, `${path}: ${first.text.slice(0, 200)}`).toBe(200);
      expect(first.text.length).toBeGreaterThan(0);
      const etag = first.headers.get('etag');
      expect(etag, path).toMatch(/^W\/"/);
      const again = await rawGet(url(path), { cookie, 'if-none-match': etag! });
      expect(again.status, path).toBe(304);
      expect(again.text, path).toBe('');
      expect(again.headers.get('etag'), path).toBe(etag);
    }
    const lastModified = (await rawGet(url(asset), { cookie })).headers.get('last-modified');
    expect(lastModified).not.toBeNull();
    expect((await rawGet(url(asset), { cookie, 'if-modified-since': lastModified! })).status).toBe(304);
  });

  it('answers a changed queue in full: the old ETag gets a 200 with the new state, never a 304', async () => {
    const before = await rawGet(url(QUEUES), { cookie });
    const isPaused = (json: any) => json.queues.find((q: { name: string }) => q.name === queue).isPaused;
    expect(isPaused(before.json)).toBe(false);
    const paused = await api(stack, 'PUT', `/admin/queues/api/queues/${queue}/pause`, { headers: { cookie, ...ownPage() } });
    expect(paused.status).toBe(200);
    const after = await rawGet(url(QUEUES), { cookie, 'if-none-match': before.headers.get('etag')! });
    expect(after.status).toBe(200);
    expect(isPaused(after.json)).toBe(true);
    expect(after.headers.get('etag')).not.toBe(before.headers.get('etag'));
    expect((await api(stack, 'PUT', `/admin/queues/api/queues/${queue}/resume`, { headers: { cookie, ...ownPage() } })).status).toBe(200);
  });
});

describe('what a cache may keep', () => {
  it('marks the page and every JSON answer no-store (queue and job data, a job naming its tenant and run), and the static files private', async () => {
    const job = await stack.container.queues.get(queue)!.add('board-caching-probe', { tenant_id: newTenant() }, { delay: 3_600_000 });
    try {
      const reads = ['/admin/queues', '/admin/queues/queue/maintenance', QUEUES, `/admin/queues/api/queues?activeQueue=${queue}&status=delayed&page=1&jobsPerPage=10`, `/admin/queues/api/queues/${queue}/${job.id}`];
      for (const path of reads) {
        for (const auth of [{ cookie }, basic]) {
          const res = await rawGet(url(path), auth);
          expect(res.status, `${path}: ${res.text.slice(0, 200)}`).toBe(200);
          expect(res.headers.get('cache-control'), path).toBe('no-store');
        }
      }
      // The job's data is in the JSON: that answer above was no-store.
      expect((await rawGet(url(`/admin/queues/api/queues/${queue}/${job.id}`), { cookie })).text).toContain('board-caching-probe');
      const asset = await rawGet(url(await staticAsset()), { cookie });
      expect(asset.status).toBe(200);
      // Behind the guard: a shared cache must not keep it for whoever asks next (Bull Board's own `public, max-age=0`).
      expect(asset.headers.get('cache-control')).toBe('private, no-cache');
    } finally {
      await job.remove();
    }
  });

  it('gives no 304 without a valid session: none, a signed-out cookie, a forged one all get a 401 without an ETag', async () => {
    const mine = await signIn();
    const asset = await staticAsset();
    const tags = new Map<string, string>();
    for (const path of ['/admin/queues', asset, QUEUES]) tags.set(path, (await rawGet(url(path), { cookie: mine })).headers.get('etag')!);
    const out = await api(stack, 'POST', '/admin/queues/logout', { headers: { cookie: mine, ...ownPage() } });
    expect(out.status).toBe(200);
    for (const [path, etag] of tags) {
      for (const credential of [{}, { cookie: mine }, { cookie: `${mine.split('=')[0]}=${'A'.repeat(43)}` }] as Record<string, string>[]) {
        const res = await rawGet(url(path), { ...credential, 'if-none-match': etag });
        expect(res.status, `${path} ${JSON.stringify(credential)}`).toBe(401);
        expect(res.headers.get('etag')).toBeNull();
        expect(res.text).not.toBe('');
      }
    }
  });
});

describe("the board's writes", () => {
  it('carry no ETag, allowed or refused, and another origin is refused (403) before anything changes', async () => {
    const etag = (await rawGet(url(QUEUES), { cookie })).headers.get('etag')!;
    const writes: Array<[string, string, number]> = [
      ['PUT', `/admin/queues/api/queues/${queue}/pause`, 200],
      ['PUT', `/admin/queues/api/queues/${queue}/resume`, 200],
      ['PUT', `/admin/queues/api/queues/${queue}/clean/completed`, 200],
      ['PUT', `/admin/queues/api/queues/${queue}/promote`, 200],
      ['POST', `/admin/queues/api/queues/${queue}/add`, 405],
      ['PUT', `/admin/queues/api/queues/${queue}/empty`, 405],
    ];
    for (const [method, path, status] of writes) {
      const res = await api(stack, method, path, { headers: { cookie, ...ownPage(), 'if-none-match': etag, 'content-type': 'application/json' }, rawBody: '{}' });
      expect(res.status, `${method} ${path}: ${res.text}`).toBe(status);
      expect(res.headers.get('etag'), `${method} ${path}`).toBeNull();
      for (const other of OTHER_ORIGINS) {
        const forged = await api(stack, method, path, { headers: { cookie, ...other } });
        expect(forged.status, `${method} ${path} ${JSON.stringify(other)}`).toBe(403);
        expect(forged.headers.get('etag')).toBeNull();
      }
    }
    expect(await stack.container.queues.get(queue)!.isPaused()).toBe(false);
  });
});
