import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { connect } from 'node:net';
import pg from 'pg';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { systemEm, tenantEm } from '../../src/platform/db/tenant-em.ts';
import { IdempotencyService, requestFingerprint, submissionHash } from '../../src/platform/idempotency/idempotency.service.ts';
import { IDEMPOTENCY_EXPIRY_JOB, MAINTENANCE_QUEUE, maintenanceHandlers } from '../../src/platform/queue/maintenance.ts';
import { submissionSchema } from '../../src/modules/golden-path/golden-path.schemas.ts';
import { GOLDEN_PATH } from '../../src/modules/golden-path/golden-path.workflow.ts';
import { PARTNER_OFFBOARDING } from '../../src/modules/partner-offboarding/partner-offboarding.workflow.ts';
import { api, newTenant, OFFBOARDING_SUBMISSION, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { sent } from '../helpers/pg-messages.ts';
import { TEST_REDIS_URL } from '../helpers/env.ts';
import { holdTable } from '../helpers/table-lock.ts';
import { waitFor, within } from '../helpers/poll.ts';
import { holdRows } from '../helpers/row-lock.ts';

const RUN = '/api/v1/golden-path/run';
const RUN_ROUTE = `POST ${RUN}`;
const PROBLEM = /^application\/problem\+json/;

/**
 * The default stack (24 h TTL, 60 s lease) with a worker; one with a 1 s TTL and lease and 3
 * submissions a minute; and one whose 1 s lease is far shorter than its 1 h TTL, so what a test sees
 * within seconds there is the lease's doing, never the TTL's.
 */
let stack: TestStack;
let short: TestStack;
let leased: TestStack;

beforeAll(async () => {
  [stack, short, leased] = await Promise.all([
    // One tenant sends 50 requests at once below: the idempotency race is the subject here, not the
    // tenant's share of the API's in-flight slots (load-shed.test.ts).
    startStack({ env: { API_MAX_INFLIGHT_PER_TENANT: '0' } }),
    startStack({ env: { IDEMPOTENCY_TTL: '1s', IDEMPOTENCY_LEASE: '1s', RATE_LIMIT_PER_MINUTE: '3' } }),
    startStack({ env: { IDEMPOTENCY_TTL: '1h', IDEMPOTENCY_LEASE: '1s' } }),
  ]);
  await stack.spawnWorker();
});
afterAll(async () => {
  await Promise.all([stack?.stop(), short?.stop(), leased?.stop()]);
});

interface Actor {
  tenant: string;
  sub: string;
  token: string;
}
async function actor(s: TestStack = stack, opts: { tenant?: string; sub?: string; roles?: string[] } = {}): Promise<Actor> {
  const tenant = opts.tenant ?? newTenant();
  const sub = opts.sub ?? `user-${randomUUID().slice(0, 8)}`;
  return { tenant, sub, token: await s.token({ tenantId: tenant, sub, roles: opts.roles ?? [] }) };
}

function submit(who: Actor, key: string | undefined, opts: { s?: TestStack; body?: unknown; rawBody?: string } = {}) {
  const headers: Record<string, string> = {};
  if (key !== undefined) headers['Idempotency-Key'] = key;
  if (opts.rawBody !== undefined) headers['content-type'] = 'application/json';
  const payload = opts.rawBody !== undefined ? { rawBody: opts.rawBody } : { body: opts.body ?? SAMPLE_SUBMISSION };
  return api(opts.s ?? stack, 'POST', RUN, { token: who.token, headers, ...payload });
}

/** A request written byte by byte, for what fetch refuses to send (repeated header fields, a header's obs-text byte). */
function rawPost(s: TestStack, path: string, headerLines: string[], body: string): Promise<{ status: number; head: string; json: any }> {
  const url = new URL(s.baseUrl);
  return new Promise((resolve, reject) => {
    const sock = connect(Number(url.port), url.hostname);
    let data = '';
    sock.setEncoding('latin1');
    sock.on('data', (d: string) => (data += d));
    sock.on('error', reject);
    sock.on('end', () => {
      const [head = '', text = ''] = data.split('\r\n\r\n', 2);
      resolve({ status: Number(head.split(' ')[1]), head, json: text ? JSON.parse(text) : undefined });
    });
    const lines = [`POST ${path} HTTP/1.1`, `Host: ${url.host}`, 'Connection: close', 'Content-Type: application/json', `Content-Length: ${Buffer.byteLength(body)}`, ...headerLines];
    // Header bytes as written (latin1: one byte a character, as a header's obs-text arrives), the body in UTF-8.
    sock.write(`${lines.join('\r\n')}\r\n\r\n`, 'latin1');
    sock.write(body);
  });
}

/** Reads through the application role with the tenant set: RLS decides what is visible. */
function asTenant(s: TestStack, tenant: string) {
  return tenantEm(s.container.orm, tenant);
}
/** Stamps the key's claim an hour ahead of the database's clock (as an older release or a clock stepped back since did). */
async function stampAnHourAhead(who: Actor, key: string): Promise<void> {
  const stamped = await asTenant(stack, who.tenant).execute(
    `update idempotency_keys set locked_at = now() + interval '1 hour' where principal = ? and idempotency_key = ?`,
    [who.sub, key],
    'run',
  );
  expect(stamped).toMatchObject({ affectedRows: 1 });
}
async function counts(tenant: string, s: TestStack = stack): Promise<{ keys: number; runs: number }> {
  const [row] = await asTenant(s, tenant).execute<{ keys: number; runs: number }[]>(
    `select (select count(*) from idempotency_keys)::int as keys, (select count(*) from durable_runs)::int as runs`,
  );
  return row!;
}
async function keyRecord(who: Actor, key: string, s: TestStack = stack) {
  const [row] = await asTenant(s, who.tenant).execute<any[]>(
    `select id, status, route, fingerprint, response_status, response_body, response_headers, locked_at, expires_at, expires_at <= now() as expired
       from idempotency_keys where principal = ? and idempotency_key = ?`,
    [who.sub, key],
  );
  return row;
}

/** What the middleware fingerprints for a golden-path submission: the validated body, no path params. */
const submissionFingerprint = (body: unknown = SAMPLE_SUBMISSION) => requestFingerprint('POST', RUN, { params: {}, body: submissionSchema.parse(body) });

/** A record as a crashed or still-running first attempt leaves it: in_progress, claimed `lockedAgo` ago. */
async function insertInProgress(s: TestStack, who: Actor, key: string, lockedAgo: string): Promise<string> {
  const id = randomUUID();
  await asTenant(s, who.tenant).execute(
    `insert into idempotency_keys (id, tenant_id, principal, idempotency_key, method, route, fingerprint, status, locked_at, created_at, expires_at)
     values (?, ?, ?, ?, 'POST', ?, ?, 'in_progress', now() - ?::interval, now() - ?::interval, now() + interval '1 day')`,
    [id, who.tenant, who.sub, key, RUN_ROUTE, submissionFingerprint(), lockedAgo, lockedAgo],
    'run',
  );
  return id;
}

/** The key claimed through the service (of the default stack), as a first request in progress holds it. */
async function claimThroughService(who: Actor, key: string) {
  const claim = await stack.container.idempotency.claim(asTenant(stack, who.tenant), {
    tenantId: who.tenant, principal: who.sub, key, method: 'POST', route: RUN_ROUTE, fingerprint: submissionFingerprint(),
  });
  if (claim.outcome !== 'claimed') throw new Error(`expected the key to be free, got ${claim.outcome}`);
  return claim;
}

function expectProblem(res: Awaited<ReturnType<typeof api>>, status: number, code: string) {
  expect(res.status, res.text).toBe(status);
  expect(res.headers.get('content-type')).toMatch(PROBLEM);
  expect(res.json).toMatchObject({ status, code, type: expect.stringContaining(code) });
}

describe('a required key that is absent or malformed', () => {
  it.each([
    ['absent', undefined],
    ['empty', ''],
    ['an empty sf-string', '""'],
    ['longer than 255 characters', 'k'.repeat(256)],
    ['not ASCII', `clé-${randomUUID()}`],
    ['carrying a tab', 'a\tb'],
    ['a broken sf-string', '"abc'],
  ])('is %s: 400 problem+json and nothing is stored or run', async (_what, key) => {
    const who = await actor();
    const res = await submit(who, key);
    expectProblem(res, 400, 'validation_failed');
    expect(res.json.errors).toEqual([expect.objectContaining({ path: 'Idempotency-Key' })]);
    expect(res.headers.get('idempotent-replayed')).toBeNull();
    expect(await counts(who.tenant)).toEqual({ keys: 0, runs: 0 });
  });

  it('is sent twice: 400 problem+json and nothing is stored or run', async () => {
    const who = await actor();
    const res = await rawPost(stack, RUN, [`Authorization: Bearer ${who.token}`, `Idempotency-Key: ${randomUUID()}`, `Idempotency-Key: ${randomUUID()}`], JSON.stringify(SAMPLE_SUBMISSION));
    expect(res.status).toBe(400);
    expect(res.head).toMatch(/content-type: application\/problem\+json/i);
    expect(res.json).toMatchObject({ code: 'validation_failed', errors: [expect.objectContaining({ path: 'Idempotency-Key' })] });
    expect(await counts(who.tenant)).toEqual({ keys: 0, runs: 0 });
  });

  it.each([
    ['two bare keys', (a: string, b: string) => `${a}, ${b}`],
    ['two bare keys without a space', (a: string, b: string) => `${a},${b}`],
    ['two sf-strings', (a: string, b: string) => `"${a}", "${b}"`],
    ['an sf-string with a parameter, then a bare key', (a: string, b: string) => `"${a}";v=1, ${b}`],
  ])('is two keys folded into one line (%s), as a proxy joins two header lines: 400 sent more than once, as for two lines', async (_what, fold) => {
    const who = await actor();
    const res = await submit(who, fold(randomUUID(), randomUUID()));
    expectProblem(res, 400, 'validation_failed');
    expect(res.json.errors).toEqual([{ path: 'Idempotency-Key', message: expect.stringContaining('sent more than once') }]);
    expect(await counts(who.tenant)).toEqual({ keys: 0, runs: 0 });
  });

  it('holds a comma inside an sf-string: one string, one key (RFC 8941), replayed as such', async () => {
    const who = await actor();
    const key = `"${randomUUID()}, ${randomUUID()}"`;
    const first = await submit(who, key);
    expect(first.status, first.text).toBe(202);
    const again = await submit(who, key);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    expect(await counts(who.tenant)).toEqual({ keys: 1, runs: 1 });
  });

  it('carries a no-break space (obs-text 0xA0) before or after it: 400, not read as the key without it', async () => {
    for (const key of [`${randomUUID()}\xa0`, `\xa0${randomUUID()}`]) {
      const who = await actor();
      const res = await rawPost(stack, RUN, [`Authorization: Bearer ${who.token}`, `Idempotency-Key: ${key}`], JSON.stringify(SAMPLE_SUBMISSION));
      expect(res.status).toBe(400);
      expect(res.json).toMatchObject({ code: 'validation_failed', errors: [expect.objectContaining({ path: 'Idempotency-Key' })] });
      expect(await counts(who.tenant)).toEqual({ keys: 0, runs: 0 });
    }
  });

  it('of exactly 255 characters is accepted', async () => {
    const who = await actor();
    const res = await submit(who, `${randomUUID()}${'k'.repeat(219)}`);
    expect(res.status, res.text).toBe(202);
    expect(await counts(who.tenant)).toEqual({ keys: 1, runs: 1 });
  });
});

describe('the first request and its replays', () => {
  let who: Actor;
  const key = randomUUID();
  let first: Awaited<ReturnType<typeof api>>;

  beforeAll(async () => {
    who = await actor();
    first = await submit(who, key);
  });

  it('runs the handler once and stores its final response', async () => {
    expect(first.status, first.text).toBe(202);
    expect(first.headers.get('idempotent-replayed')).toBeNull();
    const rec = await keyRecord(who, key);
    expect(rec).toMatchObject({ status: 'completed', route: RUN_ROUTE, response_status: 202, locked_at: null });
    expect(rec.response_headers).toMatchObject({ location: `/api/v1/golden-path/runs/${first.json.run_id}` });
    expect(await counts(who.tenant)).toEqual({ keys: 1, runs: 1 });
  });

  it('claims the key in the message that carries the handler\'s first statements: no round trip of its own', async () => {
    const other = await actor();
    const messages: string[] = [];
    const original = pg.Client.prototype.query;
    pg.Client.prototype.query = function (this: pg.Client, config: any, ...rest: any[]) {
      // A string is a simple-protocol message; a statement batch (prepared statements) renders its text.
      const text: unknown = typeof config === 'string' ? config : config?.text;
      if (typeof text === 'string') messages.push(text);
      return (original as any).call(this, config, ...rest);
    } as any;
    let res: Awaited<ReturnType<typeof api>>;
    try {
      res = await submit(other, randomUUID());
    } finally {
      pg.Client.prototype.query = original;
    }
    expect(res.status, res.text).toBe(202);
    const mine = messages.filter((m) => m.includes(other.tenant));
    const claims = mine.filter((m) => /insert into idempotency_keys/.test(m));
    expect(claims).toHaveLength(1);
    // The claim, committed on its own, then the handler's transaction: its begin, the per-tenant lock and the count.
    expect(claims[0]).toMatch(/insert into idempotency_keys[\s\S]*;\ncommit;\nbegin;\n[\s\S]*pg_advisory_xact_lock[\s\S]*select count\(\*\)/);
    // Three messages in all: claim + admission, the run's insert, the stored response with the commit.
    expect(messages).toHaveLength(3);
    expect(messages[2]).toMatch(/update idempotency_keys set status = 'completed'[\s\S]*;\ncommit$/);
  });

  it("a partner offboarding's submission sends one message more, its guard's read after the insert; a refused one rolls back, stores its 409 apart, and counts against the tenant's rate as any submission does (its replay does not)", async () => {
    const who = await actor();
    const body = { ...OFFBOARDING_SUBMISSION, partner: { reference: 'P-RT', name: 'Acme' } };
    const post = (key = randomUUID()) => api(stack, 'POST', '/api/v1/partner-offboarding/run', { token: who.token, body, headers: { 'Idempotency-Key': key } });
    const accepted = await sent(() => post());
    expect(accepted.result.status, accepted.result.text).toBe(202);
    // The golden path's three (above), and the guard's read between the run's insert and the stored response.
    expect(accepted.texts).toHaveLength(4);
    expect(accepted.texts[1]).toMatch(/^with ins as \(\s*insert into durable_runs/);
    expect(accepted.texts[2]).toMatch(/from partner_offboardings o/);
    expect(accepted.texts[3]).toMatch(/update idempotency_keys set status = 'completed'[\s\S]*;\ncommit$/);
    await waitFor(async () => (await stack.db.admin(`select 1 from partner_offboardings where run_id = $1 and status = 'archived'`, [accepted.result.json.run_id])).rowCount, {
      timeoutMs: 60_000,
      intervalMs: 100,
      what: 'the worker to offboard the partner',
    });
    const key = randomUUID();
    const refused = await sent(() => post(key));
    expect(refused.result.status, refused.result.text).toBe(409);
    expect(refused.texts).toHaveLength(5);
    expect(refused.texts.slice(2)).toEqual([expect.stringMatching(/from partner_offboardings o/), 'rollback', expect.stringMatching(/^begin;[\s\S]*response_status = 409[\s\S]*;\ncommit$/)]);
    // The tenant's submission counters (every window: a minute may have begun meanwhile).
    const counted = async () => {
      let n = 0;
      for (const k of await stack.redis.keys(`${stack.prefix}:ratelimit:${who.tenant}:*`)) n += Number(await stack.redis.get(k));
      return n;
    };
    expect(await counted()).toBe(2);
    expect((await post(key)).headers.get('idempotent-replayed')).toBe('true');
    expect(await counted()).toBe(2);
  });

  it('a submission guard that fails with something other than an AppError: 500, the run it followed rolled back, the key released for a retry', async () => {
    const who = await actor();
    const key = randomUUID();
    const post = () => api(stack, 'POST', '/api/v1/partner-offboarding/run', { token: who.token, body: OFFBOARDING_SUBMISSION, headers: { 'Idempotency-Key': key } });
    // This process's API only (the worker is another process); restored before anything else runs here.
    const wf = stack.container.runtime.workflow(PARTNER_OFFBOARDING);
    const guard = wf.admitSubmission;
    wf.admitSubmission = () => Promise.reject(new Error('the guard broke'));
    let broken: Awaited<ReturnType<typeof post>>;
    try {
      broken = await post();
    } finally {
      wf.admitSubmission = guard;
    }
    expectProblem(broken, 500, 'internal');
    expect(await counts(who.tenant)).toEqual({ keys: 0, runs: 0 });
    const retried = await post();
    expect(retried.status, retried.text).toBe(202);
    expect(retried.headers.get('idempotent-replayed')).toBeNull();
    expect(await counts(who.tenant)).toEqual({ keys: 1, runs: 1 });
  });

  it('replays the stored status, body and headers with Idempotent-Replayed: true, and starts no second run', async () => {
    const again = await submit(who, key);
    expect(again.status).toBe(202);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    // The first answer's problem+json (a replay carries no request_id: that id named the first request).
    const { request_id: _, ...firstProblem } = first.json;
    expect(again.json).toEqual(firstProblem);
    expect(again.json.run_id).toBe(first.json.run_id);
    expect(again.headers.get('location')).toBe(first.headers.get('location'));
    expect(again.headers.get('content-type')).toBe(first.headers.get('content-type'));
    expect(await counts(who.tenant)).toEqual({ keys: 1, runs: 1 });
  });

  it("does not extend the key's TTL: it still expires IDEMPOTENCY_TTL after the first request", async () => {
    // To the microsecond, as the application role under the tenant's RLS.
    const expiry = async () =>
      (
        await asTenant(stack, who.tenant).execute<{ expires_at: string; ttl_ms: number }[]>(
          `select (extract(epoch from expires_at) * 1000000)::bigint::text as expires_at,
                  (extract(epoch from expires_at - created_at) * 1000)::float8 as ttl_ms
             from idempotency_keys where principal = ? and idempotency_key = ?`,
          [who.sub, key],
        )
      )[0];
    const before = await expiry();
    expect(before?.ttl_ms).toBe(stack.container.idempotency.ttlMs);
    const again = await submit(who, key);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    expect(await expiry()).toEqual(before);
  });

  it('replays a body that differs only in key order and whitespace', async () => {
    const { currency, economics, partner } = SAMPLE_SUBMISSION;
    const reordered = `{ "currency" : "${currency}",\n  "economics": ${JSON.stringify(economics, null, 3)},\n "partner":${JSON.stringify(Object.fromEntries(Object.entries(partner).reverse()))} }`;
    const again = await submit(who, key, { rawBody: reordered });
    expect(again.status, again.text).toBe(202);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    expect(again.json.run_id).toBe(first.json.run_id);
  });

  it('answers 422 for the same key with a different body, and runs nothing', async () => {
    const other = await submit(who, key, { body: { ...SAMPLE_SUBMISSION, currency: 'USD' } });
    expectProblem(other, 422, 'idempotency_key_reused');
    expect(await counts(who.tenant)).toEqual({ keys: 1, runs: 1 });
  });

  it('the same key with a query string: refused 400 before the key is looked at (a mutating route takes no query parameter), never a replay of the first response; a query that says nothing is the same request', async () => {
    for (const query of ['?x=1', '?currency=USD', '?__proto__=1', '?constructor=1', '?toString=1', '?x[a]=1', '?x[]=1', '?=1', '?%00=1', '?a', '?&a=', '?;x=1']) {
      const res = await api(stack, 'POST', `${RUN}${query}`, { token: who.token, headers: { 'Idempotency-Key': key }, body: SAMPLE_SUBMISSION });
      expect(res.headers.get('idempotent-replayed'), query).toBeNull();
      expectProblem(res, 400, 'validation_failed');
    }
    for (const query of ['?', '?&', '?&&']) {
      const res = await api(stack, 'POST', `${RUN}${query}`, { token: who.token, headers: { 'Idempotency-Key': key }, body: SAMPLE_SUBMISSION });
      expect(res.status, `${query}: ${res.text}`).toBe(202);
      expect(res.headers.get('idempotent-replayed')).toBe('true');
    }
    expect(await counts(who.tenant)).toEqual({ keys: 1, runs: 1 });
  });

  it('answers 422 for the same key on another route', async () => {
    // The same principal, with the role the decision route demands at authentication.
    const asApprover = await stack.token({ tenantId: who.tenant, sub: who.sub, roles: ['approver'] });
    const other = await api(stack, 'POST', `/api/v1/approvals/${randomUUID()}/decision`, {
      token: asApprover,
      body: { decision: 'approve' },
      headers: { 'Idempotency-Key': key },
    });
    expectProblem(other, 422, 'idempotency_key_reused');
    expect((await keyRecord(who, key)).route).toBe(RUN_ROUTE);
  });

  it('reads a key sent as a Structured Field string as the bare key', async () => {
    const quoted = await submit(who, `"${key}"`);
    expect(quoted.status).toBe(202);
    expect(quoted.headers.get('idempotent-replayed')).toBe('true');
    expect(quoted.json.run_id).toBe(first.json.run_id);
  });

  it('treats "abc" first and abc second as one key', async () => {
    const k = `sf-${randomUUID()}`;
    const a = await submit(who, `"${k}"`);
    const b = await submit(who, k);
    expect(a.status).toBe(202);
    expect(a.headers.get('idempotent-replayed')).toBeNull();
    expect(b.headers.get('idempotent-replayed')).toBe('true');
    expect(b.json.run_id).toBe(a.json.run_id);
    expect((await keyRecord(who, k)).status).toBe('completed');
  });
});

describe('a path id is fingerprinted as validated: a UUID in any case is one request', () => {
  it.each([
    ['cancel a run', (id: string) => `/api/v1/golden-path/runs/${id}/cancel`, undefined, []],
    ['decide an approval request', (id: string) => `/api/v1/approvals/${id}/decision`, { decision: 'approve' }, ['approver']],
  ])('%s: the same key with the id in upper then lower case replays; another id is 422', async (_what, path, body, roles) => {
    const who = await actor(stack, { roles });
    const key = randomUUID();
    // No such run or request: the handler's 404 is the request's stored answer.
    const id = randomUUID();
    const send = (p: string) => api(stack, 'POST', p, { token: who.token, headers: { 'Idempotency-Key': key }, ...(body ? { body } : {}) });
    const first = await send(path(id.toUpperCase()));
    expect(first.status, first.text).toBe(404);
    expect(first.headers.get('idempotent-replayed')).toBeNull();
    const again = await send(path(id));
    expect(again.status, again.text).toBe(404);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    // The first answer's problem+json (a replay carries no request_id: that id named the first request).
    const { request_id: _, ...firstProblem } = first.json;
    expect(again.json).toEqual(firstProblem);
    expectProblem(await send(path(randomUUID())), 422, 'idempotency_key_reused');
    // Stored under the canonical id: the fingerprint of the lower-case path parameters.
    const record = await keyRecord(who, key);
    expect(record.fingerprint).toBe(requestFingerprint('POST', record.route.slice('POST '.length), { params: { id }, body: body ?? null }));
  });
});

describe('answers that are not stored', () => {
  it('a body that fails validation stores nothing, so the key stays free for the corrected request', async () => {
    const who = await actor();
    const key = randomUUID();
    const bad = await submit(who, key, { body: { ...SAMPLE_SUBMISSION, currency: 'XXX' } });
    expectProblem(bad, 422, 'validation_failed');
    expect(await counts(who.tenant)).toEqual({ keys: 0, runs: 0 });
    const good = await submit(who, key);
    expect(good.status, good.text).toBe(202);
    expect(good.headers.get('idempotent-replayed')).toBeNull();
  });

  it('a body the handler refuses as invalid (validation_failed: a webhook URL whose host resolves to loopback) stores nothing either: the corrected request runs under the same key', async () => {
    // The same problem (422 validation_failed, errors naming a body field) whether the schema or the
    // handler found it: a client cannot tell them apart, so neither is stored (Stripe: a request whose
    // parameters fail validation is not saved and can be retried).
    const tenant = newTenant();
    const admin = await stack.token({ tenantId: tenant, sub: 'admin-1', roles: ['admin'] });
    const key = randomUUID();
    const create = (url: string) => api(stack, 'POST', '/api/v1/webhook-endpoints', { token: admin, body: { url, events: ['run.completed'] }, headers: { 'Idempotency-Key': key } });
    const refused = await create('http://localhost:9/hook');
    expectProblem(refused, 422, 'validation_failed');
    expect(refused.json.errors).toEqual([{ path: 'url', message: expect.stringContaining('does not resolve to a public address') }]);
    expect(await counts(tenant)).toMatchObject({ keys: 0 });
    const fixed = await create('https://93.184.215.43/hook');
    expect(fixed.status, fixed.text).toBe(201);
    expect(fixed.headers.get('idempotent-replayed')).toBeNull();
    const replay = await create('https://93.184.215.43/hook');
    expect(replay.status).toBe(201);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(replay.text).toBe(fixed.text);
  });

  it('a 429 from admission control releases the key instead of storing it', async () => {
    const who = await actor(short);
    let limited: { key: string; res: Awaited<ReturnType<typeof api>> } | undefined;
    for (let i = 0; i < 10 && !limited; i++) {
      const key = randomUUID();
      const res = await submit(who, key, { s: short });
      if (res.status === 429) limited = { key, res };
      else expect(res.status, res.text).toBe(202);
    }
    if (!limited) throw new Error('the rate limit never answered 429');
    expectProblem(limited.res, 429, 'rate_limited');
    expect(Number(limited.res.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(await keyRecord(who, limited.key, short)).toBeUndefined();
    const retry = await submit(who, limited.key, { s: short });
    expect(retry.headers.get('idempotent-replayed')).toBeNull();
    expect([202, 429]).toContain(retry.status);
  });
});

describe('a key whose first request is still running', () => {
  it('answers 409 with Retry-After while the first holds the key, then replays its outcome', async () => {
    const who = await actor();
    const key = randomUUID();
    // Hold the run table so the first request's handler blocks after it claimed the key.
    const runs = await holdTable(stack.db.ownerUrl, 'durable_runs');
    try {
      const firstP = submit(who, key);
      await waitFor(async () => (await keyRecord(who, key))?.status === 'in_progress', { timeoutMs: 30_000, what: 'the first request to claim its key' });
      const second = await submit(who, key);
      expectProblem(second, 409, 'idempotency_key_in_use');
      expect(Number(second.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      await runs.release();
      const first = await firstP;
      expect(first.status, first.text).toBe(202);
      const third = await submit(who, key);
      expect(third.headers.get('idempotent-replayed')).toBe('true');
      expect(third.json.run_id).toBe(first.json.run_id);
      expect(await counts(who.tenant)).toEqual({ keys: 1, runs: 1 });
    } finally {
      await runs.close();
    }
  });

  it('answers 409 rather than waiting while the transaction of the first request still holds the key row', async () => {
    const who = await actor();
    const key = randomUUID();
    const first = await submit(who, key);
    expect(first.status, first.text).toBe(202);
    // As the application role under the tenant: an uncommitted write to the row, as the first request's
    // handler leaves it between storing its response and committing. The claim must not queue behind it.
    const holder = new pg.Client({ connectionString: stack.db.appUrl });
    await holder.connect();
    try {
      await holder.query('begin');
      await holder.query(`select set_config('app.tenant_id', $1, true)`, [who.tenant]);
      const held = await holder.query('update idempotency_keys set locked_at = locked_at where principal = $1 and idempotency_key = $2', [who.sub, key]);
      expect(held.rowCount).toBe(1);
      const second = await submit(who, key);
      expectProblem(second, 409, 'idempotency_key_in_use');
      expect(Number(second.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    } finally {
      await holder.query('rollback').catch(() => {});
      await holder.end();
    }
    const third = await submit(who, key);
    expect(third.headers.get('idempotent-replayed')).toBe('true');
    expect(third.json.run_id).toBe(first.json.run_id);
  });

  it('answers 409 while a claim is held through the service, and runs after it is released', async () => {
    const who = await actor();
    const key = randomUUID();
    const svc = stack.container.idempotency;
    const claim = await claimThroughService(who, key);
    expectProblem(await submit(who, key), 409, 'idempotency_key_in_use');
    await svc.release(asTenant(stack, who.tenant), claim.record);
    const res = await submit(who, key);
    expect(res.status, res.text).toBe(202);
    expect(res.headers.get('idempotent-replayed')).toBeNull();
    expect(await counts(who.tenant)).toEqual({ keys: 1, runs: 1 });
  });

  it("counts Retry-After on the database's clock and never past the lease, even with locked_at ahead of the database's read", async () => {
    const who = await actor();
    const key = randomUUID();
    // A tolerance of two hours for a claim stamped ahead of the clock that reads it (the default is a
    // second), so the claim below, stamped an hour ahead, still holds the key: read against any clock,
    // its lease would have an hour and a minute left; Retry-After asks for no more than the lease.
    const svc = new IdempotencyService({ ttlMs: 86_400_000, leaseMs: 60_000, clockStepToleranceMs: 7_200_000 });
    const em = () => asTenant(stack, who.tenant);
    const input = { tenantId: who.tenant, principal: who.sub, key, method: 'POST', route: RUN_ROUTE, fingerprint: submissionFingerprint() };
    const claim = await svc.claim(em(), input);
    if (claim.outcome !== 'claimed') throw new Error(`expected the key to be free, got ${claim.outcome}`);
    await stampAnHourAhead(who, key);
    expect(await svc.claim(em(), input)).toMatchObject({ outcome: 'in_progress', retryAfterSeconds: 60 });
    // The same answer for an attempt that lost its lease (what the key holds, read again).
    expect(await svc.afterLeaseLost(em(), claim.record)).toMatchObject({ outcome: 'in_progress', retryAfterSeconds: 60 });
  });
});

describe('a first attempt that failed or died', () => {
  it('releases the key when the handler fails with a 5xx, so a retry runs', async () => {
    const who = await actor();
    const key = randomUUID();
    const fn = `fail_${randomUUID().replace(/-/g, '')}`;
    await stack.db.admin(`create function ${fn}() returns trigger language plpgsql as $$ begin raise exception 'injected failure'; end $$`);
    await stack.db.admin(`create trigger ${fn} before insert on durable_runs for each row when (new.tenant_id = '${who.tenant}') execute function ${fn}()`);
    try {
      const failed = await submit(who, key);
      expectProblem(failed, 500, 'internal');
      expect(await counts(who.tenant)).toEqual({ keys: 0, runs: 0 });
    } finally {
      await stack.db.admin(`drop trigger ${fn} on durable_runs`);
      await stack.db.admin(`drop function ${fn}()`);
    }
    const retry = await submit(who, key);
    expect(retry.status, retry.text).toBe(202);
    expect(retry.headers.get('idempotent-replayed')).toBeNull();
    expect(await counts(who.tenant)).toEqual({ keys: 1, runs: 1 });
  });

  it('lets a retry take over once the lease of a dead attempt expires (IDEMPOTENCY_LEASE=1s, IDEMPOTENCY_TTL=1h)', async () => {
    const who = await actor(leased);
    const key = randomUUID();
    const recordId = await insertInProgress(leased, who, key, '0 seconds');
    // Retries until one is not a 409: within the 1 s lease every one is told the key is in use.
    const seen: Awaited<ReturnType<typeof submit>>[] = [];
    const retry = await waitFor(async () => {
      const r = await submit(who, key, { s: leased });
      seen.push(r);
      return r.status === 409 ? undefined : r;
    }, { timeoutMs: 30_000, what: 'the lease to expire' });
    expect(retry.status, retry.text).toBe(202);
    const before = seen.slice(0, -1);
    expect(before.length, 'no retry came within the lease').toBeGreaterThan(0);
    // Retry-After is the lease's remaining time (1 s at most), not the key's hour-long TTL.
    expect(before.map((r) => [r.status, r.json?.code, r.headers.get('retry-after')])).toEqual(before.map(() => [409, 'idempotency_key_in_use', '1']));
    expect(retry.headers.get('idempotent-replayed')).toBeNull();
    const rec = await keyRecord(who, key, leased);
    expect(rec).toMatchObject({ id: recordId, status: 'completed' });
    const [run] = await asTenant(leased, who.tenant).execute<any[]>('select id, idempotency_hash from durable_runs');
    expect(run).toEqual({ id: retry.json.run_id, idempotency_hash: submissionHash(who.tenant, recordId) });
    expect(await counts(who.tenant, leased)).toEqual({ keys: 1, runs: 1 });
  });

  it("takes over a dead attempt's claim stamped ahead of the database's clock, while a claim stamped just now still holds its key", async () => {
    // IDEMPOTENCY_LEASE=60s. A claim an hour ahead of the clock that reads it was not taken an hour from
    // now: an older release stamped it with an API process's clock that ran ahead, or the database's
    // clock stepped back since (a failover to a server whose clock is behind, which also ended the
    // connection of the attempt that held it). It holds nothing: a retry takes the submission over.
    const who = await actor();
    const [ahead, fresh] = [randomUUID(), randomUUID()];
    const recordId = await insertInProgress(stack, who, ahead, '0 seconds');
    await stampAnHourAhead(who, ahead);
    const retry = await submit(who, ahead);
    expect(retry.status, retry.text).toBe(202);
    expect(retry.headers.get('idempotent-replayed')).toBeNull();
    expect(await keyRecord(who, ahead)).toMatchObject({ id: recordId, status: 'completed', locked_at: null });
    const [run] = await asTenant(stack, who.tenant).execute<any[]>('select id, idempotency_hash from durable_runs');
    expect(run).toEqual({ id: retry.json.run_id, idempotency_hash: submissionHash(who.tenant, recordId) });
    // A claim the database stamped just now is an attempt in flight: its key is held for the lease.
    await insertInProgress(stack, who, fresh, '0 seconds');
    const dup = await submit(who, fresh);
    expectProblem(dup, 409, 'idempotency_key_in_use');
    expect(Number(dup.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(Number(dup.headers.get('retry-after'))).toBeLessThanOrEqual(60);
    expect(await counts(who.tenant)).toEqual({ keys: 2, runs: 1 });
  });

  it('fences a slow first attempt: once a retry took its lease over, it can neither complete nor free the key', async () => {
    const who = await actor(short);
    const key = randomUUID();
    // A day-long TTL with a 1 s lease, so the key outlives its lease.
    const svc = new IdempotencyService({ ttlMs: 86_400_000, leaseMs: 1000 });
    const em = () => asTenant(short, who.tenant);
    const input = { tenantId: who.tenant, principal: who.sub, key, method: 'POST', route: RUN_ROUTE, fingerprint: submissionFingerprint() };
    const first = await svc.claim(em(), input);
    if (first.outcome !== 'claimed') throw new Error(`expected the key to be free, got ${first.outcome}`);
    const second = await waitFor(async () => {
      const c = await svc.claim(em(), input);
      return c.outcome === 'claimed' ? c : undefined;
    }, { timeoutMs: 30_000, what: 'the first lease to expire' });
    expect(second.record.id).toBe(first.record.id);
    expect(second.record.lease).not.toBe(first.record.lease);
    expect(second.hash).toBe(first.hash);
    await svc.release(em(), first.record);
    expect((await keyRecord(who, key, short)).status).toBe('in_progress');
    await expect(em().transactional((tx) => svc.store(tx, first.record, { status: 202, body: { from: 'first' }, headers: {} }))).rejects.toThrow(/lease/);
    await em().transactional((tx) => svc.store(tx, second.record, { status: 202, body: { from: 'second' }, headers: {} }));
    expect(await keyRecord(who, key, short)).toMatchObject({ status: 'completed', response_body: '{"from":"second"}' });
  });

  it("fences an attempt whose claim is stamped ahead of the database's clock: a retry takes it over at once, and the attempt can neither complete nor free the key", async () => {
    // The claim of an attempt in flight when the database's clock stepped back an hour (or one an older
    // release stamped with an API clock an hour ahead): what the attempt holds is that stamp, its lease.
    const who = await actor();
    const key = randomUUID();
    const svc = stack.container.idempotency;
    const em = () => asTenant(stack, who.tenant);
    const input = { tenantId: who.tenant, principal: who.sub, key, method: 'POST', route: RUN_ROUTE, fingerprint: submissionFingerprint() };
    const claimed = await svc.claim(em(), input);
    if (claimed.outcome !== 'claimed') throw new Error(`expected the key to be free, got ${claimed.outcome}`);
    await stampAnHourAhead(who, key);
    const first = (await svc.get_existing(em(), who.tenant, who.sub, key))!;
    expect(first.lease).not.toBe(claimed.record.lease);
    // Within the 60 s lease, yet taken over at once: the stamp is more than 1 s ahead of the database's clock.
    const second = await svc.claim(em(), input);
    if (second.outcome !== 'claimed') throw new Error(`expected a takeover, got ${second.outcome}`);
    expect(second.record.id).toBe(first.id);
    expect(second.record.lease).not.toBe(first.lease);
    // The takeover stamps the database's own clock: its claim holds the key (a duplicate now gets 409).
    expect(await svc.claim(em(), input)).toMatchObject({ outcome: 'in_progress' });
    await svc.release(em(), first);
    expect((await keyRecord(who, key)).status).toBe('in_progress');
    await expect(em().transactional((tx) => svc.store(tx, first, { status: 202, body: { from: 'first' }, headers: {} }))).rejects.toThrow(/lease/);
    await em().transactional((tx) => svc.store(tx, second.record, { status: 202, body: { from: 'second' }, headers: {} }));
    expect(await keyRecord(who, key)).toMatchObject({ status: 'completed', response_body: '{"from":"second"}' });
  });

  it('repairs the crash window: a run created but its key never completed is found, not duplicated', async () => {
    const who = await actor();
    const key = randomUUID();
    const recordId = await insertInProgress(stack, who, key, '10 minutes');
    const { run, created } = await stack.container.runtime.start_run(asTenant(stack, who.tenant), GOLDEN_PATH, {
      tenantId: who.tenant,
      principal: who.sub,
      idempotencyHash: submissionHash(who.tenant, recordId),
      input: submissionSchema.parse(SAMPLE_SUBMISSION),
      correlationId: 'crashed-attempt',
    });
    expect(created).toBe(true);
    const retry = await submit(who, key);
    expect(retry.status, retry.text).toBe(202);
    expect(retry.json.run_id).toBe(run.id);
    expect(retry.json.correlation_id).toBe('crashed-attempt');
    expect(await keyRecord(who, key)).toMatchObject({ id: recordId, status: 'completed' });
    expect(await counts(who.tenant)).toEqual({ keys: 1, runs: 1 });
    // The repaired run is enqueued and goes on to completion like any other.
    await waitFor(async () => {
      const r = await api(stack, 'GET', `/api/v1/golden-path/runs/${run.id}`, { token: who.token });
      return ['waiting', 'completed'].includes(r.json?.status);
    }, { timeoutMs: 60_000, what: 'the repaired run to progress' });
  });
});

describe('scope: tenants and users', () => {
  it('keeps the same key of tenants A and B independent: two runs, neither sees the other', async () => {
    const key = randomUUID();
    const a = await actor(stack, { sub: 'same-user' });
    const b = await actor(stack, { sub: 'same-user' });
    const ra = await submit(a, key);
    const rb = await submit(b, key);
    expect([ra.status, rb.status]).toEqual([202, 202]);
    expect(rb.headers.get('idempotent-replayed')).toBeNull();
    expect(rb.json.run_id).not.toBe(ra.json.run_id);
    expect(await counts(a.tenant)).toEqual({ keys: 1, runs: 1 });
    expect(await counts(b.tenant)).toEqual({ keys: 1, runs: 1 });
    expect((await api(stack, 'GET', `/api/v1/golden-path/runs/${rb.json.run_id}`, { token: a.token })).status).toBe(404);
    expect((await api(stack, 'GET', `/api/v1/golden-path/runs/${ra.json.run_id}`, { token: b.token })).status).toBe(404);
    // Each replays its own outcome, never the other's.
    expect((await submit(a, key)).json.run_id).toBe(ra.json.run_id);
    expect((await submit(b, key)).json.run_id).toBe(rb.json.run_id);
    // Different bodies are fine across tenants: no 422 leaks that the other used the key.
    const other = await actor(stack, { sub: 'same-user' });
    expect((await submit(other, key, { body: { ...SAMPLE_SUBMISSION, currency: 'USD' } })).status).toBe(202);
  });

  it('keeps the same key of two users of one tenant independent', async () => {
    const key = randomUUID();
    const u1 = await actor();
    const u2 = await actor(stack, { tenant: u1.tenant });
    const r1 = await submit(u1, key);
    const r2 = await submit(u2, key, { body: { ...SAMPLE_SUBMISSION, currency: 'USD' } });
    expect([r1.status, r2.status]).toEqual([202, 202]);
    expect(r2.headers.get('idempotent-replayed')).toBeNull();
    expect(r2.json.run_id).not.toBe(r1.json.run_id);
    expect(await counts(u1.tenant)).toEqual({ keys: 2, runs: 2 });
    expect((await stack.container.idempotency.get_existing(asTenant(stack, u1.tenant), u1.tenant, u1.sub, key))?.responseBody).toBe(r1.text);
    expect((await submit(u1, key)).json.run_id).toBe(r1.json.run_id);
    expect((await submit(u2, key, { body: { ...SAMPLE_SUBMISSION, currency: 'USD' } })).json.run_id).toBe(r2.json.run_id);
  });
});

describe('a key older than the TTL', () => {
  it('is treated as new (IDEMPOTENCY_TTL=1s): a new run, no replay', async () => {
    const who = await actor(short);
    const key = randomUUID();
    const first = await submit(who, key, { s: short });
    expect(first.status, first.text).toBe(202);
    await waitFor(async () => (await keyRecord(who, key, short))?.expired, { timeoutMs: 30_000, what: 'the key to expire' });
    const again = await submit(who, key, { s: short });
    expect(again.status, again.text).toBe(202);
    expect(again.headers.get('idempotent-replayed')).toBeNull();
    expect(again.json.run_id).not.toBe(first.json.run_id);
    expect(await counts(who.tenant, short)).toEqual({ keys: 1, runs: 2 });
  });
});

describe('concurrent duplicates', () => {
  it('50 identical requests at once: exactly one run; every other answer a 409 or a replay; no 5xx', async () => {
    const who = await actor();
    const key = randomUUID();
    const results = await Promise.all(Array.from({ length: 50 }, () => submit(who, key)));
    const statuses = results.map((r) => r.status);
    expect(statuses.filter((s) => s >= 500)).toEqual([]);
    const fresh = results.filter((r) => r.status === 202 && r.headers.get('idempotent-replayed') === null);
    const replays = results.filter((r) => r.status === 202 && r.headers.get('idempotent-replayed') === 'true');
    const inUse = results.filter((r) => r.status === 409);
    expect(fresh).toHaveLength(1);
    expect(replays.length + inUse.length).toBe(49);
    for (const r of replays) expect(r.json.run_id).toBe(fresh[0]!.json.run_id);
    for (const r of inUse) {
      expect(r.json.code).toBe('idempotency_key_in_use');
      expect(Number(r.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    }
    expect(await counts(who.tenant)).toEqual({ keys: 1, runs: 1 });
  });
});

describe('the approval decision', () => {
  let submitter: Actor;
  let approver: Actor;
  let approvalId: string;

  beforeAll(async () => {
    // The submitter holds the approver role too: the handler itself refuses to let it decide its own run.
    submitter = await actor(stack, { roles: ['approver'] });
    approver = await actor(stack, { tenant: submitter.tenant, roles: ['approver'] });
    const res = await submit(submitter, randomUUID());
    const run = await waitFor(async () => {
      const r = await api(stack, 'GET', `/api/v1/golden-path/runs/${res.json.run_id}`, { token: submitter.token });
      return r.json?.status === 'waiting' ? r.json : undefined;
    }, { timeoutMs: 60_000, what: 'the run to wait for approval' });
    approvalId = run.steps[2].output.approval_request_id;
  });

  const decide = (who: Actor, key: string | undefined, body: unknown = { decision: 'approve', comment: 'ok' }) =>
    api(stack, 'POST', `/api/v1/approvals/${approvalId}/decision`, { token: who.token, body, ...(key !== undefined ? { headers: { 'Idempotency-Key': key } } : {}) });
  const decisions = async () =>
    (await asTenant(stack, submitter.tenant).execute<{ n: number }[]>('select count(*)::int as n from approval_decisions where approval_request_id = ?', [approvalId]))[0]!.n;

  it('requires a key: 400 and nothing stored or decided', async () => {
    const before = await counts(submitter.tenant);
    expectProblem(await decide(approver, undefined), 400, 'validation_failed');
    expect(await counts(submitter.tenant)).toEqual(before);
    expect(await decisions()).toBe(0);
  });

  it('stores and replays a definitive 4xx (the submitter may not decide)', async () => {
    const key = randomUUID();
    const first = await decide(submitter, key);
    expectProblem(first, 403, 'forbidden');
    const again = await decide(submitter, key);
    expectProblem(again, 403, 'forbidden');
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    const { request_id: _perRequest, ...stored } = first.json;
    expect(again.json).toEqual(stored);
    expect(await decisions()).toBe(0);
  });

  it('decides once: a retry replays the decision, another body under the key is 422', async () => {
    const key = randomUUID();
    const first = await decide(approver, key);
    expect(first.status, first.text).toBe(200);
    expect(first.json).toMatchObject({ approval_request_id: approvalId, status: 'approved' });
    const again = await decide(approver, key);
    expect(again.status).toBe(200);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    // The first answer's problem+json (a replay carries no request_id: that id named the first request).
    const { request_id: _, ...firstProblem } = first.json;
    expect(again.json).toEqual(firstProblem);
    expectProblem(await decide(approver, key, { decision: 'reject' }), 422, 'idempotency_key_reused');
    expect(await decisions()).toBe(1);
    // A new key is a new request: the request is already decided, and that answer is stored too.
    expectProblem(await decide(approver, randomUUID()), 409, 'approval_decided');
  });
});

describe('expiry maintenance', () => {
  it('deletes the expired keys of every tenant in batches as the system role, and nothing else', async () => {
    const tenants = [newTenant(), newTenant()];
    for (const t of tenants) {
      for (let i = 0; i < 5; i++) {
        const expired = i < 3;
        await asTenant(stack, t).execute(
          `insert into idempotency_keys (id, tenant_id, principal, idempotency_key, method, route, fingerprint, status, response_status, locked_at, created_at, expires_at)
           values (?, ?, 'maint', ?, 'POST', ?, ?, 'completed', 202, null, now() - interval '2 days', now() + ?::interval)`,
          [randomUUID(), t, `${expired ? 'old' : 'live'}-${i}`, RUN_ROUTE, submissionFingerprint(), expired ? '-1 minute' : '1 hour'],
          'run',
        );
      }
    }
    const { deleted, complete } = await stack.container.idempotency.deleteExpired(systemEm(stack.container.orm), 2);
    expect(deleted).toBeGreaterThanOrEqual(6);
    expect(complete).toBe(true);
    for (const t of tenants) {
      const rows = await asTenant(stack, t).execute<{ idempotency_key: string }[]>('select idempotency_key from idempotency_keys order by 1');
      expect(rows.map((r) => r.idempotency_key)).toEqual(['live-3', 'live-4']);
    }
    // The system role cannot reach live keys even when it asks for all of them.
    const res = await systemEm(stack.container.orm).transactional((tx) => tx.execute('delete from idempotency_keys', [], 'run'));
    expect((res as { affectedRows?: number }).affectedRows).toBe(0);
    for (const t of tenants) expect((await counts(t)).keys).toBe(2);
  });

  it('runs as the idempotency-expiry job handler', async () => {
    const t = newTenant();
    await asTenant(stack, t).execute(
      `insert into idempotency_keys (id, tenant_id, principal, idempotency_key, method, route, fingerprint, status, created_at, expires_at)
       values (?, ?, 'maint', 'old', 'POST', ?, ?, 'in_progress', now() - interval '2 days', now() - interval '1 second')`,
      [randomUUID(), t, RUN_ROUTE, submissionFingerprint()],
      'run',
    );
    const handlers = maintenanceHandlers({ orm: stack.container.orm, idempotency: stack.container.idempotency, logger: stack.container.logger });
    const out = await handlers[IDEMPOTENCY_EXPIRY_JOB]();
    expect(out.deleted).toBeGreaterThanOrEqual(1);
    expect((await counts(t)).keys).toBe(0);
  });

  it('a pass that stops at its limit queues the next at once (one waiting at most), so a backlog drains pass after pass, not one pass per 10 minutes', async () => {
    // A pass deletes at most batchSize × maxBatches keys (1,000 × 100 by default, every 10 minutes:
    // 100,000, fewer than 200 keyed POSTs a second make in that time). Here 2 × 1 against 5 expired keys.
    const t = newTenant();
    for (let i = 0; i < 6; i++) {
      await asTenant(stack, t).execute(
        `insert into idempotency_keys (id, tenant_id, principal, idempotency_key, method, route, fingerprint, status, response_status, created_at, expires_at)
         values (?, ?, 'maint', ?, 'POST', ?, ?, 'completed', 202, now() - interval '2 days', now() + ?::interval)`,
        [randomUUID(), t, `k-${i}`, RUN_ROUTE, submissionFingerprint(), i < 5 ? '-1 minute' : '1 hour'],
        'run',
      );
    }
    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
    // A queue of this test's own, which no worker serves: what a pass queues stays there to be seen.
    const queue = new Queue(MAINTENANCE_QUEUE, { connection, prefix: `${stack.prefix}-expiry-follow-up` });
    const handlers = maintenanceHandlers({
      orm: stack.container.orm,
      idempotency: stack.container.idempotency,
      logger: stack.container.logger,
      maintenanceQueue: () => queue,
      idempotencyBatch: { batchSize: 2, maxBatches: 1 },
    });
    const queued = async () => (await queue.getJobs(['waiting', 'prioritized', 'delayed'])).filter((j) => j.name === IDEMPOTENCY_EXPIRY_JOB).length;
    try {
      expect(await handlers[IDEMPOTENCY_EXPIRY_JOB]()).toEqual({ deleted: 2, complete: false });
      expect(await queued()).toBe(1);
      expect(await handlers[IDEMPOTENCY_EXPIRY_JOB]()).toEqual({ deleted: 2, complete: false });
      expect(await queued()).toBe(1);
      // The rest of the backlog (this file's other tests leave expired keys too), pass after pass.
      let passes = 0;
      while (!(await handlers[IDEMPOTENCY_EXPIRY_JOB]()).complete) expect(++passes).toBeLessThan(10_000);
      const left = await asTenant(stack, t).execute<{ idempotency_key: string }[]>('select idempotency_key from idempotency_keys');
      expect(left.map((r) => r.idempotency_key)).toEqual(['k-5']);
    } finally {
      await queue.obliterate({ force: true });
      await queue.close();
      connection.disconnect();
    }
  });

  it('judges a batch short by the keys it picked, not those it deleted: a key re-claimed under the pass does not end it with expired keys left', async () => {
    // A batch that picks a full batch but deletes fewer (a key taken over as new by a request reusing it
    // after its TTL while the batch waited for its row, or one a concurrent pass deleted) has not found
    // the end of the backlog. Counted by deleted keys, it ended the pass as complete, queueing no
    // follow-up: the rest waited for the next scheduled pass, 10 minutes on (ADR 0013's lesson).
    const svc = stack.container.idempotency;
    // What this file's other tests left expired, deleted first: the first batch below picks this test's keys.
    for (let passes = 0; !(await svc.deleteExpired(systemEm(stack.container.orm))).complete; ) expect(++passes).toBeLessThan(1000);
    const t = newTenant();
    const insert = (key: string, expiresIn: string) =>
      asTenant(stack, t).execute(
        `insert into idempotency_keys (id, tenant_id, principal, idempotency_key, method, route, fingerprint, status, response_status, created_at, expires_at)
         values (?, ?, 'maint', ?, 'POST', ?, ?, 'completed', 202, now() - interval '2 days', now() + ?::interval)`,
        [randomUUID(), t, key, RUN_ROUTE, submissionFingerprint(), expiresIn],
        'run',
      );
    await insert('reclaimed', '-2 minutes');
    await insert('expired', '-1 minute');
    // Not expired yet for the first batch (2 keys: the two above, whatever its plan's order), expired
    // for the next one, which starts once the re-claim below has committed.
    await insert('expiring', '1 second');
    // A request reusing `reclaimed` after its TTL takes it over as new (claimRow: a new record id, a new
    // TTL), its transaction open while the pass's first batch waits for the row.
    const lock = await holdRows(
      stack,
      `update idempotency_keys set id = $1, status = 'in_progress', response_status = null, locked_at = now(), created_at = now(),
              expires_at = now() + interval '1 hour' where tenant_id = $2 and idempotency_key = 'reclaimed'`,
      [randomUUID(), t],
    );
    try {
      const pass = svc.deleteExpired(systemEm(stack.container.orm), 2);
      await lock.waitedFor("the pass's first batch waiting for the re-claimed key");
      await waitFor(
        async () =>
          (await stack.db.admin(`select expires_at < clock_timestamp() as past from idempotency_keys where tenant_id = $1 and idempotency_key = 'expiring'`, [t])).rows[0]
            ?.past,
        { timeoutMs: 30_000, what: 'the third key to expire' },
      );
      await lock.release();
      // The first batch picked 2 and deleted 1 (`expired`): not the end; the next one deletes `expiring`.
      expect(await within(pass, 'the expiry pass')).toMatchObject({ complete: true });
    } finally {
      await lock.close();
    }
    const left = await asTenant(stack, t).execute<{ idempotency_key: string }[]>('select idempotency_key from idempotency_keys order by 1');
    expect(left.map((r) => r.idempotency_key)).toEqual(['reclaimed']);
  });

  it('is registered as the idempotency-expiry Job Scheduler of the maintenance queue when a worker starts', async () => {
    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
    const queue = new Queue(MAINTENANCE_QUEUE, { connection, prefix: stack.prefix });
    try {
      const scheduler = await waitFor(() => queue.getJobScheduler(IDEMPOTENCY_EXPIRY_JOB), { timeoutMs: 30_000, what: 'the job scheduler' });
      expect(scheduler).toMatchObject({ key: IDEMPOTENCY_EXPIRY_JOB, name: IDEMPOTENCY_EXPIRY_JOB });
      expect(Number(scheduler.every)).toBeGreaterThan(0);
    } finally {
      await queue.close();
      connection.disconnect();
    }
  });
});
