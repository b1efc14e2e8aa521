import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { adminAuth, OPERATOR_ROLE } from '../../src/platform/http/admin-auth.middleware.ts';
import { OPERATOR_LOGIN_WINDOW_MS, operatorLoginWindow, operatorSessions } from '../../src/platform/http/admin-board.ts';
import { OTHER_ORIGINS, postSignIn, sessionCookieOf } from '../helpers/dashboard-sign-in.ts';

/**
 * The operator dashboard against a hostile web page and a hostile client: Bull Board with its actions
 * on (BULL_BOARD_READ_ONLY=false), an operator whose browser holds the credentials.
 */
const OPERATOR = { user: 'operator', password: 'operator-password-1' };
const MAX_FAILURES = 3;
const basic = (user: string, password: string) => ({ authorization: `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}` });

let stack: TestStack;
let token: string;
/** The cookie of an operator's browser: the session a `?token=` link started (with a token of its own: a link's token signs nothing in afterwards). */
let session: { cookie: string };

beforeAll(async () => {
  stack = await startStack({
    env: { OPERATOR_USER: OPERATOR.user, OPERATOR_PASSWORD: OPERATOR.password, OPERATOR_LOGIN_MAX_FAILURES: String(MAX_FAILURES), BULL_BOARD_READ_ONLY: 'false' },
  });
  token = await stack.token({ tenantId: newTenant(), sub: 'operator-1', roles: [OPERATOR_ROLE] });
  const link = await postSignIn(stack.baseUrl, await stack.token({ tenantId: newTenant(), sub: 'operator-1', roles: [OPERATOR_ROLE] }));
  session = { cookie: sessionCookieOf(link.setCookie) };
});
afterAll(async () => {
  await stack?.stop();
});

describe("the dashboard's actions from another site (CSRF)", () => {
  // A browser sends an operator's cached HTTP Basic credentials (and, from a sibling subdomain, the
  // SameSite=Strict cookie) with a form another page submits; a form may POST text/plain cross-site
  // without a preflight.
  const queue = 'maintenance';
  const addPath = `/admin/queues/api/queues/${queue}/add`;
  const jobs = () => stack.container.queues.get(queue)!.getJobCountByTypes('waiting', 'delayed', 'active', 'completed', 'failed', 'prioritized');

  it('refuses a state-changing request a page on another origin makes the browser send: 403, nothing changed', async () => {
    const before = await jobs();
    for (const headers of OTHER_ORIGINS) {
      for (const auth of [basic(OPERATOR.user, OPERATOR.password), session]) {
        const res = await api(stack, 'POST', addPath, { headers: { ...auth, ...headers, 'content-type': 'text/plain' }, rawBody: '{"name":"forged","data":{}}' });
        expect(res.status, `${JSON.stringify(headers)}: ${res.text}`).toBe(403);
        expect(res.headers.get('content-type')).toContain('application/problem+json');
        const pause = await api(stack, 'PUT', `/admin/queues/api/queues/${queue}/pause`, { headers: { ...auth, ...headers } });
        expect(pause.status).toBe(403);
      }
    }
    expect(await jobs()).toBe(before);
    expect(await stack.container.queues.get(queue)!.isPaused()).toBe(false);
  });

  it("still serves the dashboard's own requests (same origin) and tools (no Origin), and cross-site reads", async () => {
    const host = new URL(stack.baseUrl).host;
    const own = { 'sec-fetch-site': 'same-origin', origin: stack.baseUrl };
    expect((await api(stack, 'PUT', `/admin/queues/api/queues/${queue}/pause`, { headers: { ...basic(OPERATOR.user, OPERATOR.password), ...own } })).status).toBe(200);
    expect(await stack.container.queues.get(queue)!.isPaused()).toBe(true);
    // No Sec-Fetch-Site, an Origin of this host: allowed.
    expect((await api(stack, 'PUT', `/admin/queues/api/queues/${queue}/resume`, { headers: { ...session, origin: `http://${host}` } })).status).toBe(200);
    expect(await stack.container.queues.get(queue)!.isPaused()).toBe(false);
    // A tool: neither header.
    expect((await api(stack, 'PUT', `/admin/queues/api/queues/${queue}/pause`, { token })).status).toBe(200);
    expect((await api(stack, 'PUT', `/admin/queues/api/queues/${queue}/resume`, { token })).status).toBe(200);
    // A link followed from elsewhere (a GET) still opens the board.
    expect((await api(stack, 'GET', '/admin/queues', { headers: { ...basic(OPERATOR.user, OPERATOR.password), 'sec-fetch-site': 'cross-site' } })).status).toBe(200);
  });

  it("behind a proxy that rewrites Host, an older browser's own action passes by X-Forwarded-Host (TRUST_PROXY), another site's does not", async () => {
    // The stack trusts loopback (the default TRUST_PROXY), as a proxy on the same host would be.
    const viaProxy = { ...basic(OPERATOR.user, OPERATOR.password), host: 'api.internal:3000', 'x-forwarded-host': 'ops.example.com' };
    const own = await api(stack, 'PUT', `/admin/queues/api/queues/${queue}/pause`, { headers: { ...viaProxy, origin: 'https://ops.example.com' } });
    expect(own.status, own.text).toBe(200);
    expect((await api(stack, 'PUT', `/admin/queues/api/queues/${queue}/resume`, { headers: { ...viaProxy, origin: 'https://api.internal:3000' } })).status).toBe(403);
    expect((await api(stack, 'PUT', `/admin/queues/api/queues/${queue}/resume`, { headers: { ...viaProxy, origin: 'https://ops.example.com' } })).status).toBe(200);
    expect(await stack.container.queues.get(queue)!.isPaused()).toBe(false);
  });
});

describe("the dashboard's job writes (Add job, Edit job data)", () => {
  // A run job's data is what a worker reads in place of the run (tenant, run, first step's input):
  // written by hand, it would bypass the API's validation, idempotency and tenant binding. Refused on
  // every queue even with writes on; the actions that work on jobs the platform made stay.
  const own = { ...basic(OPERATOR.user, OPERATOR.password), 'sec-fetch-site': 'same-origin', origin: '' };
  const queue = 'golden-path';
  const forgedRun = { run_id: '00000000-0000-4000-8000-000000000001', tenant_id: newTenant(), workflow: 'golden-path', workflow_version: 1, sequence_num: 1, step: 'forged' };

  it('refuses adding a job to any queue: 405 problem+json, nothing added', async () => {
    own.origin = stack.baseUrl;
    for (const name of [queue, 'maintenance']) {
      const q = stack.container.queues.get(name)!;
      const before = await q.getJobCountByTypes('waiting', 'delayed', 'active', 'completed', 'failed', 'prioritized');
      const res = await api(stack, 'POST', `/admin/queues/api/queues/${name}/add`, { headers: own, body: { name: 'run', data: forgedRun, options: { delay: 3_600_000 } } });
      expect(res.status, res.text).toBe(405);
      expect(res.headers.get('content-type')).toContain('application/problem+json');
      expect(res.json.code).toBe('board_job_write_refused');
      expect(await q.getJobCountByTypes('waiting', 'delayed', 'active', 'completed', 'failed', 'prioritized')).toBe(before);
    }
  });

  it('refuses them however the path is spelled that Bull Board would still route (letter case, trailing slash)', async () => {
    // Bull Board's router matches its paths case-insensitively and with or without a trailing slash
    // (Express's defaults): a spelling the refusal does not match would reach the action.
    own.origin = stack.baseUrl;
    const q = stack.container.queues.get(queue)!;
    const counts = () => q.getJobCountByTypes('waiting', 'delayed', 'active', 'completed', 'failed', 'prioritized');
    const before = await counts();
    for (const path of [`/admin/queues/API/Queues/${queue}/ADD`, `/admin/queues/api/queues/${queue}/Add/`, `/ADMIN/QUEUES/api/queues/${queue}/add`]) {
      const res = await api(stack, 'POST', path, { headers: own, body: { name: 'run', data: forgedRun, options: { delay: 3_600_000 } } });
      expect(res.status, `${path}: ${res.text}`).toBe(405);
    }
    expect(await counts()).toBe(before);
    const data = { ...forgedRun, tenant_id: newTenant() };
    const job = await q.add('board-edit-case-probe', data, { jobId: `board-edit-case-probe-${Date.now()}`, delay: 3_600_000 });
    try {
      for (const path of [`/admin/queues/api/queues/${queue}/${encodeURIComponent(job.id!)}/UPDATE-DATA`, `/admin/queues/Api/queues/${queue}/${encodeURIComponent(job.id!)}/update-data/`]) {
        const res = await api(stack, 'PATCH', path, { headers: own, body: { jobData: { ...data, tenant_id: newTenant() } } });
        expect(res.status, `${path}: ${res.text}`).toBe(405);
      }
      expect((await q.getJob(job.id!))!.data).toEqual(data);
    } finally {
      await q.remove(job.id!);
    }
  });

  it("refuses editing a job's data: 405, the data as the platform wrote it; promoting the job still works", async () => {
    own.origin = stack.baseUrl;
    const q = stack.container.queues.get(queue)!;
    const data = { ...forgedRun, tenant_id: newTenant() };
    const job = await q.add('board-edit-probe', data, { jobId: `board-edit-probe-${Date.now()}`, delay: 3_600_000 });
    try {
      const res = await api(stack, 'PATCH', `/admin/queues/api/queues/${queue}/${encodeURIComponent(job.id!)}/update-data`, { headers: own, body: { jobData: { ...data, tenant_id: newTenant() } } });
      expect(res.status, res.text).toBe(405);
      expect(res.json.code).toBe('board_job_write_refused');
      expect((await q.getJob(job.id!))!.data).toEqual(data);
      const promote = await api(stack, 'PUT', `/admin/queues/api/queues/${queue}/${encodeURIComponent(job.id!)}/promote`, { headers: own });
      expect(promote.status, promote.text).toBe(204);
      expect(await (await q.getJob(job.id!))!.getState()).toBe('waiting');
    } finally {
      await q.remove(job.id!);
    }
  });
});

describe("the dashboard's actions beyond the documented ones (BULL_BOARD_READ_ONLY=false)", () => {
  // Writes on allow pausing and resuming, retrying, promoting and cleaning (removing) jobs — the
  // actions docs/operations.md names. Bull Board 9 also offers actions that break what the platform
  // relies on where no repair sees it: a delayed job's delay changed (an SLA timer a year out: the run
  // waits past its deadline, the sweeper sees the timer there), a maintenance scheduler's interval
  // changed, a global concurrency or rate limit left in Redis, a queue emptied or obliterated. Each is
  // refused: 405 problem+json, the queue as it was.
  const own = { ...basic(OPERATOR.user, OPERATOR.password), 'sec-fetch-site': 'same-origin' };
  const queue = 'golden-path';
  const counts = (q: ReturnType<typeof stack.container.queues.get> & object) => q.getJobCountByTypes('waiting', 'delayed', 'active', 'completed', 'failed', 'prioritized');

  it('refuses every other write: 405 problem+json, jobs, schedulers and queue settings unchanged', async () => {
    const q = stack.container.queues.get(queue)!;
    const maintenance = stack.container.queues.get('maintenance')!;
    const stamp = Date.now();
    const timer = await q.add('board-action-probe', { probe: true }, { jobId: `board-action-probe-${stamp}`, delay: 3_600_000, priority: 5 });
    const scheduler = `board-action-probe-scheduler-${stamp}`;
    await maintenance.upsertJobScheduler(scheduler, { every: 3_600_000 }, { name: scheduler, data: {} });
    const job = encodeURIComponent(timer.id!);
    try {
      const before = { jobs: await counts(q), maintenance: await counts(maintenance), delay: timer.delay, timestamp: timer.timestamp };
      const refused: [string, string, unknown?][] = [
        ['PATCH', `/admin/queues/api/queues/${queue}/${job}/delay`, { runAt: Date.now() + 365 * 86_400_000 }],
        ['PATCH', `/admin/queues/api/queues/${queue}/${job}/priority`, { priority: 1 }],
        ['PUT', `/admin/queues/api/queues/${queue}/concurrency`, { concurrency: 1 }],
        ['PUT', `/admin/queues/api/queues/${queue}/rate-limit`, { max: 1, duration: 3_600_000 }],
        ['PUT', `/admin/queues/api/queues/${queue}/rate-limit/release`],
        ['PUT', `/admin/queues/api/queues/${queue}/empty`],
        ['PUT', `/admin/queues/api/queues/${queue}/obliterate`, {}],
        ['PUT', `/admin/queues/api/queues/${queue}/${job}/remove-unprocessed-children`],
        ['PATCH', `/admin/queues/api/queues/maintenance/job-schedulers/${scheduler}`, { every: 30 * 86_400_000 }],
        ['PUT', `/admin/queues/api/queues/maintenance/job-schedulers/${scheduler}/run`],
        ['PUT', `/admin/queues/api/queues/maintenance/job-schedulers/${scheduler}/remove`],
        // However spelled that Bull Board still routes (letter case, a trailing slash).
        ['PATCH', `/admin/queues/API/queues/${queue}/${job}/DELAY/`, { runAt: Date.now() + 365 * 86_400_000 }],
        ['PUT', `/admin/queues/api/Queues/${queue}/Concurrency`, { concurrency: 1 }],
      ];
      for (const [method, path, body] of refused) {
        const res = await api(stack, method, path, { headers: own, body: body ?? {} });
        expect(res.status, `${method} ${path}: ${res.text}`).toBe(405);
        expect(res.headers.get('content-type')).toContain('application/problem+json');
        expect(res.json.code).toBe('board_action_refused');
      }
      const after = (await q.getJob(timer.id!))!;
      expect(await after.getState()).toBe('delayed');
      expect({ delay: after.delay, timestamp: after.timestamp, priority: after.priority }).toEqual({ delay: before.delay, timestamp: before.timestamp, priority: 5 });
      expect(await counts(q)).toEqual(before.jobs);
      expect(await counts(maintenance)).toEqual(before.maintenance);
      expect(await q.getGlobalConcurrency()).toBeNull();
      expect(await q.getGlobalRateLimit()).toBeNull();
      expect((await maintenance.getJobScheduler(scheduler))?.every).toBe(3_600_000);
    } finally {
      await q.remove(timer.id!);
      await maintenance.removeJobScheduler(scheduler);
    }
  });

  it('still pauses and resumes, retries, promotes and cleans', async () => {
    const q = stack.container.queues.get(queue)!;
    const stamp = Date.now();
    const a = await q.add('board-action-allowed', { probe: true }, { jobId: `board-action-allowed-a-${stamp}`, delay: 3_600_000 });
    const b = await q.add('board-action-allowed', { probe: true }, { jobId: `board-action-allowed-b-${stamp}`, delay: 3_600_000 });
    try {
      for (const path of [`/admin/queues/api/queues/${queue}/pause`, '/admin/queues/api/queues/resume']) {
        const res = await api(stack, 'PUT', path, { headers: own });
        expect(res.status, `${path}: ${res.text}`).toBe(200);
      }
      expect(await q.isPaused()).toBe(false);
      // Promote one job, then remove (clean) it; the other by promoting them all, then cleaning the waiting ones.
      expect((await api(stack, 'PUT', `/admin/queues/api/queues/${queue}/${encodeURIComponent(a.id!)}/promote`, { headers: own })).status).toBe(204);
      expect(await (await q.getJob(a.id!))!.getState()).toBe('waiting');
      expect((await api(stack, 'PUT', `/admin/queues/api/queues/${queue}/${encodeURIComponent(a.id!)}/clean`, { headers: own })).status).toBe(204);
      expect(await q.getJob(a.id!)).toBeUndefined();
      // Retrying the failed jobs answers (none may be failed here: the route is what is checked).
      const retry = await api(stack, 'PUT', `/admin/queues/api/queues/${queue}/retry/failed`, { headers: own });
      expect(retry.status, retry.text).toBe(200);
      expect((await api(stack, 'PUT', `/admin/queues/api/queues/${queue}/promote`, { headers: own })).status).toBe(200);
      expect(await (await q.getJob(b.id!))!.getState()).toBe('waiting');
    } finally {
      await q.remove(a.id!).catch(() => undefined);
      await q.remove(b.id!);
    }
  });
});

describe('the dashboard in a frame (clickjacking)', () => {
  it('every dashboard response forbids framing, sniffing and referrers, signed in or not', async () => {
    for (const res of [
      await api(stack, 'GET', '/admin/queues', { token }),
      await api(stack, 'GET', '/admin/queues/api/queues', { token }),
      await api(stack, 'GET', '/admin/queues'),
    ]) {
      expect(res.headers.get('x-frame-options')).toBe('DENY');
      expect(res.headers.get('content-security-policy')).toContain("frame-ancestors 'none'");
      expect(res.headers.get('x-content-type-options')).toBe('nosniff');
      expect(res.headers.get('referrer-policy')).toBe('no-referrer');
    }
  });
});

/** The dashboard's guard itself, called as Express would, against the real Redis. */
function directGuard(prefix: string, now?: () => number) {
  const window = operatorLoginWindow(stack.redis, `${stack.prefix}:${prefix}`, now);
  const guard = adminAuth({ verifier: stack.container.verifier, logger: stack.container.logger, operator: OPERATOR, basePath: '/admin/queues', loginThrottle: { window, maxFailures: MAX_FAILURES }, sessions: operatorSessions(stack.redis, stack.config) });
  return (password: string, ip = '203.0.113.9') =>
    new Promise<number>((resolve, reject) => {
      const headers: Record<string, string> = basic(OPERATOR.user, password);
      const req = { method: 'GET', query: {}, path: '/', originalUrl: '/admin/queues', ip, secure: false, get: (h: string) => headers[h.toLowerCase()] };
      const res = {
        locals: {},
        statusCode: 200,
        setHeader: () => res,
        status: (s: number) => ((res.statusCode = s), res),
        type: () => res,
        send: () => resolve(res.statusCode),
      };
      Promise.resolve(guard(req as never, res as never, () => resolve(200))).catch(reject);
    });
}

describe('operator login throttling under concurrent guesses', () => {
  it('guesses sent at once are counted as they arrive: no more than the allowed failures are checked', async () => {
    // Many requests in one tick (as many connections arriving together would): each reads the count
    // before any has counted its failure, unless reading and counting are one step.
    const call = directGuard('operator-login-race');
    const statuses = await Promise.all(Array.from({ length: 5 * MAX_FAILURES }, (_, i) => call(`parallel-guess-${i}`)));
    expect(statuses.every((s) => s === 401 || s === 429), statuses.join()).toBe(true);
    expect(statuses.filter((s) => s === 401).length, statuses.join()).toBeLessThanOrEqual(MAX_FAILURES);
    // And the right password is refused too for the rest of the window.
    expect(await call(OPERATOR.password)).toBe(429);
  });

  it('an IPv6 client is one /64 (what one host or customer holds): new addresses in it are no new allowance', async () => {
    const call = directGuard('operator-login-v6');
    for (let i = 0; i < MAX_FAILURES; i++) expect(await call(`v6-guess-${i}`, `2001:db8:1:2::${i + 1}`)).toBe(401);
    expect(await call('v6-guess-x', '2001:db8:1:2:ffff:ffff:ffff:fffe')).toBe(429);
    expect(await call('v6-guess-y', '2001:0db8:0001:0002:0:0:0:abcd')).toBe(429);
    // Another /64, and IPv4 (also IPv4-mapped), count apart.
    expect(await call(OPERATOR.password, '2001:db8:1:3::1')).toBe(200);
    expect(await call(OPERATOR.password, '::ffff:198.51.100.7')).toBe(200);
  });
  it("an address with a port (Azure Application Gateway's X-Forwarded-For: ip:port) is the address: a new port is no new allowance", async () => {
    const call = directGuard('operator-login-port');
    for (let i = 0; i < MAX_FAILURES; i++) expect(await call(`port-guess-${i}`, `203.0.113.77:${40000 + i}`)).toBe(401);
    expect(await call('port-guess-x', '203.0.113.77:50000')).toBe(429);
    expect(await call('port-guess-y', '203.0.113.77')).toBe(429);
    for (let i = 0; i < MAX_FAILURES; i++) expect(await call(`port6-guess-${i}`, `[2001:db8:7:7::${i + 1}]:${40000 + i}`)).toBe(401);
    expect(await call('port6-guess-x', '2001:db8:7:7::99')).toBe(429);
  });

  it('a request refused while others were still being checked is no failure: it does not lock the operator out', async () => {
    // The operator's browser loads the board's assets in parallel with the right credentials: each
    // counts before its check, so a burst beyond the allowance gets 429s. Those were never checked;
    // if they stayed counted, each burst would leave more behind until the right password is refused.
    const ip = '198.51.100.20';
    const call = directGuard('operator-login-inflight');
    const window = operatorLoginWindow(stack.redis, `${stack.prefix}:operator-login-inflight`);
    const inFlight = await Promise.all(Array.from({ length: MAX_FAILURES }, () => window.hit(ip)));
    for (let i = 0; i < 3; i++) expect(await call(OPERATOR.password, ip)).toBe(429);
    for (const hit of inFlight) await window.unhit(hit); // they were right
    expect(await call(OPERATOR.password, ip)).toBe(200);
  });
  it('the window slides: failures just before a 15-minute boundary still count just after it, until 15 minutes after each', async () => {
    // docs/operations.md promises a 429 after OPERATOR_LOGIN_MAX_FAILURES failures "in 15 minutes": a
    // window fixed to the clock's quarter hours let as many again be checked right after a boundary
    // (twice the allowance in a few seconds). The clock here is the window's own, moved by the test.
    const ip = '198.51.100.31';
    const boundary = Math.ceil(Date.now() / OPERATOR_LOGIN_WINDOW_MS + 1) * OPERATOR_LOGIN_WINDOW_MS;
    let now = boundary - 1_000;
    const call = directGuard(`operator-login-sliding-${boundary}`, () => now);
    for (let i = 0; i < MAX_FAILURES; i++) expect(await call(`sliding-guess-${i}`, ip)).toBe(401);
    now = boundary + 1_000;
    expect(await call('sliding-guess-after-boundary', ip)).toBe(429);
    expect(await call(OPERATOR.password, ip)).toBe(429);
    // 15 minutes after the failures, they no longer count.
    now = boundary - 1_000 + OPERATOR_LOGIN_WINDOW_MS + 1;
    expect(await call(OPERATOR.password, ip)).toBe(200);
  });

  it('a right password does not use up the allowance', async () => {
    for (let i = 0; i < 3 * MAX_FAILURES; i++) {
      expect((await api(stack, 'GET', '/admin/queues', { headers: basic(OPERATOR.user, OPERATOR.password) })).status).toBe(200);
    }
    for (let i = 0; i < MAX_FAILURES; i++) {
      expect((await api(stack, 'GET', '/admin/queues', { headers: basic(OPERATOR.user, `guess-${i}-password`) })).status).toBe(401);
    }
    expect((await api(stack, 'GET', '/admin/queues', { headers: basic(OPERATOR.user, OPERATOR.password) })).status).toBe(429);
  });
});
