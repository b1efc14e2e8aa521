/**
 * A webhook endpoint's create resolves its host (the SSRF guard) before the request's transaction,
 * so it holds no database connection while DNS answers. The host's DNS is the tenant's: one that
 * never answers would otherwise hold one of the API's pooled connections per create, for the
 * resolver's whole timeout, and a tenant's share of in-flight requests exceeds the pool.
 *
 * DNS is a real server here (test/helpers/dns-server.ts, the API's WEBHOOK_DNS_SERVERS): it holds one
 * name's queries until the test releases them and never answers another; PostgreSQL and Redis are the
 * real ones, and the API's pool has a single connection.
 *
 * The wait is bounded (WEBHOOK_DNS_TIMEOUT, at most WEBHOOK_TIMEOUT): a host whose DNS never answers
 * gets a 503 once it has passed, and nothing is stored. The bound is made small through the config.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { startDnsServer, type TestDns } from '../helpers/dns-server.ts';
import { waitFor, within } from '../helpers/poll.ts';
import { refusedOf } from '../helpers/metrics.ts';
import { capturedLog } from '../helpers/log-capture.ts';

const ENDPOINTS = '/api/v1/webhook-endpoints';
const GATED_HOST = 'receiver.gated.test';
const SILENT_HOST = 'receiver.silent.test';
const CREATE_HELD = 'create.share.test';
const UPDATE_HELD = 'update.share.test';

describe('webhook endpoint create: DNS outside the transaction', () => {
  let stack: TestStack;
  let dns: TestDns;
  const log = capturedLog();

  beforeAll(async () => {
    dns = await startDnsServer();
    dns.hold(GATED_HOST, { a: ['93.184.215.14'] });
    stack = await startStack({ env: { DATABASE_POOL_MAX: '1', WEBHOOK_DNS_SERVERS: dns.server, WEBHOOK_DNS_TIMEOUT: '60s', WEBHOOK_TIMEOUT: '60s', LOG_LEVEL: 'info' }, logDestination: log.destination });
  }, 120_000);

  afterAll(async () => {
    dns?.release(GATED_HOST);
    await stack?.stop();
    await dns?.close();
  });

  /** A new tenant's admin creating an endpoint for `host` under one Idempotency-Key (`k`, another key; `b`, another body), and the queries for `host` so far. */
  const keyedCreates = async (host: string) => {
    const tenant = newTenant();
    const admin = await stack.token({ tenantId: tenant, sub: 'admin-1', roles: ['admin'] });
    const body = { url: `https://${host}/hook`, events: ['run.completed'] };
    const key = randomUUID();
    const create = (k = key, b: object = body) => api(stack, 'POST', ENDPOINTS, { token: admin, body: b, headers: { 'Idempotency-Key': k } });
    return { tenant, admin, create, queriesOf: (name = host) => dns.queries.filter((q) => q.name === name).length };
  };

  it("another request is served while a create waits for its host's DNS; the create then answers 201", async () => {
    const admin = await stack.token({ tenantId: newTenant(), sub: 'admin-1', roles: ['admin'] });
    const other = await stack.token({ tenantId: newTenant(), sub: 'admin-1', roles: ['admin'] });
    const create = api(stack, 'POST', ENDPOINTS, { token: admin, body: { url: `https://${GATED_HOST}/hook`, events: ['run.completed'] }, headers: { 'Idempotency-Key': randomUUID() } });
    await waitFor(() => dns.asked(GATED_HOST), { what: "the create's DNS query" });
    // With the pool's only connection held by the create's transaction, this would wait for the DNS answer.
    const listed = await Promise.race([
      api(stack, 'GET', ENDPOINTS, { token: other }),
      // Long enough for a GET that is not blocked to be answered on a loaded machine (then it wins the race at once).
      new Promise<'blocked'>((r) => setTimeout(() => r('blocked'), 30_000).unref()),
    ]);
    expect(listed === 'blocked' ? 'the list waited for the create’s DNS (a connection held through it)' : 'served').toBe('served');
    expect(typeof listed === 'object' && listed.status).toBe(200);
    dns.release(GATED_HOST);
    const created = await create;
    expect(created.status, created.text).toBe(201);
  });

  // The tenant's share of the API's connections (API_MAX_DB_CONNECTIONS_PER_TENANT, here the pool's 1) is taken
  // after the DNS wait: a create or an update waiting for its host's DNS holds none of it, and the tenant's other
  // requests are served meanwhile. Held through the wait, the read below waited for the place, then was 503.
  it("the same tenant's other requests are served while its create, then its update, waits for DNS: no place of its connection share is held", async () => {
    const tenant = newTenant();
    const admin = await stack.token({ tenantId: tenant, sub: 'admin-1', roles: ['admin'] });
    // `send` waits for `host`'s DNS, held meanwhile: the tenant reads its endpoints, then the answer is released.
    const readWhileHeld = async (host: string, what: string, send: () => ReturnType<typeof api>) => {
      dns.hold(host, { a: ['93.184.215.14'] });
      const sent = send();
      try {
        await waitFor(() => dns.asked(host), { what: `${what}'s DNS query` });
        const listed = await within(api(stack, 'GET', ENDPOINTS, { token: admin }), `the tenant's read while ${what} waits for DNS`, 60_000);
        expect(listed.status, `${what}: ${listed.text}`).toBe(200);
      } finally {
        dns.release(host);
      }
      return within(sent, what, 60_000);
    };
    const created = await readWhileHeld(CREATE_HELD, 'a create', () =>
      api(stack, 'POST', ENDPOINTS, { token: admin, body: { url: `https://${CREATE_HELD}/hook`, events: ['run.completed'] }, headers: { 'Idempotency-Key': randomUUID() } }),
    );
    expect(created.status, created.text).toBe(201);
    const updated = await readWhileHeld(UPDATE_HELD, 'an update', () =>
      api(stack, 'PATCH', `${ENDPOINTS}/${created.json.id}`, { token: admin, body: { url: `https://${UPDATE_HELD}/hook` }, headers: { 'Idempotency-Key': randomUUID() } }),
    );
    expect(updated.status, updated.text).toBe(200);
    expect(updated.json.url).toBe(`https://${UPDATE_HELD}/hook`);
    // No read of the tenant was refused for its share meanwhile.
    expect(refusedOf((await api(stack, 'GET', '/metrics')).text, 'tenant_db_connections', `GET ${ENDPOINTS}`) ?? 0).toBe(0);
  });

  // A replay needs no resolution: the key's stored outcome is what it answers, whatever the host's DNS does now. The
  // router looks the key up (one short read, a place of the share for that read only) before the route's `prepare`;
  // before, a replay waited for the host's DNS (up to WEBHOOK_DNS_TIMEOUT, here 60 s) and only then replayed.
  it("a replay of a stored create answers at once while the host's DNS hangs, asking no DNS; a first submission under another key still resolves the host", async () => {
    const host = 'replay.create.test';
    const { admin, create, queriesOf } = await keyedCreates(host);
    dns.answer(host, { a: ['93.184.215.14'] });
    const created = await create();
    expect(created.status, created.text).toBe(201);
    const before = queriesOf();
    expect(before).toBeGreaterThan(0);
    // From now on the host's queries are held (never answered until released).
    dns.hold(host, { a: ['93.184.215.14'] });
    let replayed: Awaited<ReturnType<typeof api>> | undefined;
    const replay = create().then((r) => (replayed = r));
    let fresh: ReturnType<typeof api> | undefined;
    try {
      // Whichever comes first: the replay's answer, or a query for its host (the SSRF check run again).
      const first = await waitFor(() => (replayed ? 'answered' : queriesOf() > before ? 'asked DNS first' : undefined), { timeoutMs: 60_000, what: 'the replay to answer, or to ask DNS' });
      expect(first).toBe('answered');
      expect(replayed!.status, replayed!.text).toBe(201);
      expect(replayed!.headers.get('idempotent-replayed')).toBe('true');
      expect(replayed!.json).toEqual(created.json);
      expect(queriesOf()).toBe(before);
      // The SSRF check still guards a first submission: a new key for the same host waits for its (held) DNS.
      fresh = create(randomUUID());
      await waitFor(() => queriesOf() > before, { what: "the first submission's DNS query" });
    } finally {
      dns.release(host);
      await replay;
    }
    const second = await within(fresh, 'the first submission after its DNS answered', 60_000);
    expect(second.status, second.text).toBe(201);
    expect(second.headers.get('idempotent-replayed')).toBeNull();
    expect((await api(stack, 'GET', ENDPOINTS, { token: admin })).json.items).toHaveLength(2);
  });

  // The key read before `prepare` answers only a settled key: one still in progress goes on to the DNS, and the claim
  // that follows it decides — a replay if the first attempt finished meanwhile, 409 if not; another body under the
  // key is 422 at once, in progress or stored. None stores anything of its own. The first attempt's claim is made
  // "in progress" by hand (its stored row set back), so the test holds no connection of the pool's one meanwhile.
  it('a key in progress when its duplicate reads it: the duplicate resolves, then replays if the first finished meanwhile (409 if not); another body is 422 without DNS', async () => {
    const host = 'inflight.create.test';
    const { tenant, admin, create, queriesOf } = await keyedCreates(host);
    const record = async () => (await stack.db.admin(`select status, fingerprint, response_status, response_body::text as body from idempotency_keys where tenant_id = $1`, [tenant])).rows;
    const setInProgress = () => stack.db.admin(`update idempotency_keys set status = 'in_progress', locked_at = now() where tenant_id = $1`, [tenant]);
    const setCompleted = () => stack.db.admin(`update idempotency_keys set status = 'completed', locked_at = null where tenant_id = $1`, [tenant]);
    dns.answer(host, { a: ['93.184.215.14'] });
    const created = await create();
    expect(created.status, created.text).toBe(201);
    const stored = await record();
    expect(stored).toEqual([expect.objectContaining({ status: 'completed', response_status: 201 })]);
    const other = { url: 'https://other.inflight.create.test/hook', events: ['run.completed'] };
    dns.hold('other.inflight.create.test', { a: ['93.184.215.14'] });
    try {
      for (const state of ['in progress', 'stored'] as const) {
        if (state === 'in progress') await setInProgress();
        else await setCompleted();
        const reused = await within(create(undefined, other), `another body under the key ${state}`, 60_000);
        expect(reused.status, `${state}: ${reused.text}`).toBe(422);
        expect(reused.json.code, state).toBe('idempotency_key_reused');
      }
      expect(queriesOf('other.inflight.create.test')).toBe(0);
    } finally {
      dns.release('other.inflight.create.test');
    }
    for (const finished of [true, false]) {
      await setInProgress();
      const before = queriesOf();
      dns.hold(host, { a: ['93.184.215.14'] });
      const duplicate = create();
      try {
        // Past the key's read (in progress: not answered from it), in `prepare`, waiting for its DNS.
        await waitFor(() => queriesOf() > before, { what: "the duplicate's DNS query" });
        if (finished) await setCompleted();
      } finally {
        dns.release(host);
      }
      const res = await within(duplicate, `the duplicate (first attempt ${finished ? 'finished' : 'still in progress'})`, 60_000);
      if (finished) {
        expect(res.status, res.text).toBe(201);
        expect(res.headers.get('idempotent-replayed')).toBe('true');
        expect(res.json).toEqual(created.json);
      } else {
        expect(res.status, res.text).toBe(409);
        expect(res.json.code).toBe('idempotency_key_in_use');
        expect(res.headers.get('retry-after')).toBeTruthy();
        await setCompleted();
      }
    }
    // Nothing of the duplicates' or the other bodies' stored: the key holds the first answer, one endpoint exists.
    expect(await record()).toEqual(stored);
    expect((await api(stack, 'GET', ENDPOINTS, { token: admin })).json.items).toHaveLength(1);
  });

  // prepare runs before the share's place: a client that hangs up during its DNS is not run once the answer comes
  // (as one that hangs up waiting for a place), and holds nothing — the tenant's one place is free, its key unclaimed.
  it('a create whose client hangs up while its DNS is held is not run and holds no place of the share; its retry under the same key creates (201, not a replay)', async () => {
    const tenant = newTenant();
    const admin = await stack.token({ tenantId: tenant, sub: 'admin-1', roles: ['admin'] });
    const host = 'hangup.share.test';
    const key = randomUUID();
    const body = JSON.stringify({ url: `https://${host}/hook`, events: ['run.completed'] });
    dns.hold(host, { a: ['93.184.215.14'] });
    const abort = new AbortController();
    const sent = fetch(`${stack.baseUrl}${ENDPOINTS}`, { method: 'POST', body, signal: abort.signal, headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json', 'Idempotency-Key': key } }).catch(() => undefined);
    try {
      await waitFor(() => dns.asked(host), { what: "the create's DNS query" });
      abort.abort();
      await sent;
      await waitFor(() => log.lines.some((l) => l.msg === 'request aborted' && l.req?.method === 'POST'), { timeoutMs: 30_000, what: 'the API to see the hang-up' });
    } finally {
      dns.release(host);
    }
    const retried = await within(api(stack, 'POST', ENDPOINTS, { token: admin, body: JSON.parse(body), headers: { 'Idempotency-Key': key } }), 'the retry', 60_000);
    expect(retried.status, retried.text).toBe(201);
    expect(retried.headers.get('idempotent-replayed')).toBeNull();
    const listed = await within(api(stack, 'GET', ENDPOINTS, { token: admin }), "the tenant's read after the hang-up", 60_000);
    expect(listed.status, listed.text).toBe(200);
    expect(listed.json.items.map((e: { url: string }) => e.url)).toEqual([`https://${host}/hook`]);
  });
});

describe('webhook endpoint create: a bounded wait for DNS', () => {
  let stack: TestStack;
  let dns: TestDns;

  beforeAll(async () => {
    dns = await startDnsServer();
    dns.silence(SILENT_HOST);
    // WEBHOOK_DNS_TIMEOUT bounds the create's DNS wait: short, yet long for the names that answer on a loaded machine.
    stack = await startStack({ env: { WEBHOOK_DNS_SERVERS: dns.server, WEBHOOK_DNS_TIMEOUT: '2s' } });
  }, 120_000);

  afterAll(async () => {
    await stack?.stop();
    await dns?.close();
  });

  it('a host whose DNS never answers: 503 problem+json naming the host once the wait is over, nothing stored, the key free for a retry', async () => {
    const tenant = newTenant();
    const admin = await stack.token({ tenantId: tenant, sub: 'admin-1', roles: ['admin'] });
    const key = randomUUID();
    const create = api(stack, 'POST', ENDPOINTS, { token: admin, body: { url: `https://${SILENT_HOST}/hook`, events: ['run.completed'] }, headers: { 'Idempotency-Key': key } });
    // Unbounded, the create waits for a resolver that never answers: this stops the test instead of its timeout.
    const answered = await Promise.race([create, new Promise<'still waiting'>((r) => setTimeout(() => r('still waiting'), 30_000).unref())]);
    expect(answered === 'still waiting' ? 'the create still waits for DNS' : 'answered').toBe('answered');
    const res = answered as Awaited<typeof create>;
    // A resolver that did not answer says nothing about the URL: "not now" (503, Retry-After), not a 422 that calls the URL wrong.
    expect(res.status, res.text).toBe(503);
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(res.headers.get('retry-after')).toBeTruthy();
    expect(res.json.detail).toBe(`The host ${SILENT_HOST} could not be resolved within 2000 ms; try again.`);
    const listed = await api(stack, 'GET', ENDPOINTS, { token: admin });
    expect(listed.status).toBe(200);
    expect(listed.json.items).toEqual([]);
    // The key was released, not stored: no idempotency record of the tenant's remains.
    expect((await stack.db.admin(`select 1 from idempotency_keys where tenant_id = $1`, [tenant])).rows).toEqual([]);
  });
  it('private networks refused: a host the DNS server resolves to a private address (either family) and an unknown one get the same 422 (which internal names exist is not told), a public one 201', async () => {
    dns.answer('private.create.test', { a: ['10.0.0.7'] });
    // The private AAAA answer is sent before the public A one: the resolver has it however late it reads the A one.
    dns.answerFirst('private6.create.test', { a: ['93.184.215.14'], aaaa: ['fd00::7'] }, 'AAAA');
    dns.answer('public.create.test', { a: ['93.184.215.14'] });
    const admin = await stack.token({ tenantId: newTenant(), sub: 'admin-1', roles: ['admin'] });
    const create = (host: string) => api(stack, 'POST', ENDPOINTS, { token: admin, body: { url: `https://${host}/hook`, events: ['run.completed'] }, headers: { 'Idempotency-Key': randomUUID() } });
    // `http://redis/` (an internal name) and `http://nosuch/` told apart by their 422 would map the platform's network for a tenant admin.
    const bodies: unknown[] = [];
    for (const host of ['private.create.test', 'private6.create.test', 'unknown.create.test']) {
      const res = await create(host);
      expect(res.status, res.text).toBe(422);
      expect(res.json.errors).toEqual([{ path: 'url', message: `its host ${host} does not resolve to a public address` }]);
      const { request_id: _r, instance: _i, ...body } = res.json as Record<string, unknown>;
      bodies.push(JSON.parse(JSON.stringify(body).replaceAll(host, '<host>')));
    }
    expect(bodies[1]).toEqual(bodies[0]);
    expect(bodies[2]).toEqual(bodies[0]);
    const created = await create('public.create.test');
    expect(created.status, created.text).toBe(201);
  });

  it('the Idempotency-Key standard with the DNS before the share: a refused URL stores nothing (its key runs again, fixed); a created one replays its stored 201 though its host now fails', async () => {
    const tenant = newTenant();
    const admin = await stack.token({ tenantId: tenant, sub: 'admin-1', roles: ['admin'] });
    dns.answer('flaky.create.test', { a: ['10.0.0.9'] });
    const key = randomUUID();
    const create = () => api(stack, 'POST', ENDPOINTS, { token: admin, body: { url: 'https://flaky.create.test/hook', events: ['run.completed'] }, headers: { 'Idempotency-Key': key } });
    const refused = await create();
    expect(refused.status, refused.text).toBe(422);
    expect((await stack.db.admin(`select 1 from idempotency_keys where tenant_id = $1`, [tenant])).rows).toEqual([]);
    dns.answer('flaky.create.test', { a: ['93.184.215.16'] });
    const created = await create();
    expect(created.status, created.text).toBe(201);
    // Its name servers fail now: the replay answers what the key holds, not the 503 of a resolution it does not need.
    dns.servfail('flaky.create.test');
    const replay = await create();
    expect(replay.status, replay.text).toBe(201);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(replay.json.secret).toBe(created.json.secret);
    expect((await api(stack, 'GET', ENDPOINTS, { token: admin })).json.items).toHaveLength(1);
  });

  it('a host whose name server fails (SERVFAIL): 503 "for now", nothing stored — it says nothing of the URL', async () => {
    dns.servfail('failing.create.test');
    const admin = await stack.token({ tenantId: newTenant(), sub: 'admin-1', roles: ['admin'] });
    const res = await api(stack, 'POST', ENDPOINTS, { token: admin, body: { url: 'https://failing.create.test/hook', events: ['run.completed'] }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(res.status, res.text).toBe(503);
    expect(res.headers.get('retry-after')).toBeTruthy();
    expect(res.json.detail).toBe('The host failing.create.test could not be resolved for now (ESERVFAIL); try again.');
    expect((await api(stack, 'GET', ENDPOINTS, { token: admin })).json.items).toEqual([]);
  });

  it("an update (PATCH) to a host whose DNS never answers: 503 once the wait is over, the endpoint unchanged, the key free for a retry", async () => {
    const tenant = newTenant();
    const admin = await stack.token({ tenantId: tenant, sub: 'admin-1', roles: ['admin'] });
    const created = await api(stack, 'POST', ENDPOINTS, { token: admin, body: { url: 'https://93.184.215.43/hook', events: ['run.completed'] }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(created.status, created.text).toBe(201);
    const key = randomUUID();
    const res = await api(stack, 'PATCH', `${ENDPOINTS}/${created.json.id}`, { token: admin, body: { url: `https://${SILENT_HOST}/hook` }, headers: { 'Idempotency-Key': key } });
    expect(res.status, res.text).toBe(503);
    expect(res.headers.get('retry-after')).toBeTruthy();
    expect((await api(stack, 'GET', `${ENDPOINTS}/${created.json.id}`, { token: admin })).json.url).toBe('https://93.184.215.43/hook');
    expect((await stack.db.admin(`select 1 from idempotency_keys where tenant_id = $1 and idempotency_key = $2`, [tenant, key])).rows).toEqual([]);
  });
});
