import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import fc from 'fast-check';
import pg from 'pg';
import { api, CLASS_A_SUBMISSION, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { isValidCorrelationId } from '../../src/platform/http/correlation.ts';
import { parseIdempotencyKey } from '../../src/platform/idempotency/idempotency.service.ts';
import { OPERATOR_ROLE } from '../../src/platform/http/admin-auth.middleware.ts';

/**
 * Property-based hostile input over every endpoint (the routes are read from the container, so a new
 * route is covered the day it is added): random and malformed bodies, wrong content types and
 * encodings, deep and oversized JSON, invalid UTF-8, odd Idempotency-Key and X-Correlation-Id values,
 * bad path parameters. Never a 5xx; every 4xx is problem+json; a request refused at the edge
 * persists nothing.
 */

const NUM_RUNS = Number(process.env.HOSTILE_RUNS ?? 100);
const BODY_LIMIT = 64 * 1024;
/** Problem codes of refusals before any handler runs: nothing at all may be stored for these. */
const EDGE_CODES = new Set(['validation_failed', 'malformed_json', 'payload_too_large', 'unsupported_media_type', 'unsupported_encoding', 'unauthorized', 'bad_request', 'rate_limited', 'idempotency_key_reused', 'idempotency_key_in_use', 'method_not_allowed']);

const tenant = newTenant();
let stack: TestStack;
let token: string;
let realIds: string[] = [];

interface HostileRequest {
  method: string;
  path: string;
  headers: Record<string, string | string[]>;
  body: Buffer | undefined;
}

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });

/** Raw node:http, so GET bodies, repeated headers and Latin-1 header bytes go out as generated. */
function send(req: HostileRequest): Promise<Reply> {
  const url = new URL(stack.baseUrl);
  return new Promise((resolve, reject) => {
    let settled = false;
    const headers: http.OutgoingHttpHeaders = { ...req.headers };
    if (req.body) headers['content-length'] = req.body.length;
    const r = http.request({ host: url.hostname, port: url.port, method: req.method, path: req.path, headers, agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        settled = true;
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') });
      });
    });
    // The server may answer 413 and close before an oversized body is fully written; the answer counts.
    r.on('error', (e) => {
      if (!settled) reject(e);
    });
    r.end(req.body);
  });
}

// --- generators ------------------------------------------------------------------------------

const pct = (bytes: Uint8Array) => [...bytes].map((b) => (/[A-Za-z0-9\-_.~]/.test(String.fromCharCode(b)) ? String.fromCharCode(b) : `%${b.toString(16).padStart(2, '0').toUpperCase()}`)).join('');
/** Header-safe (node:http accepts tab, 0x20–0x7e and Latin-1 0x80–0xff). */
const headerText = (maxLength: number) =>
  fc.string({ unit: fc.integer({ min: 0x20, max: 0xff }).filter((c) => c !== 0x7f).map((c) => String.fromCharCode(c)), maxLength });

const pathParam = () =>
  fc.oneof(
    fc.constant('REAL'),
    fc.uuid().map((u) => u),
    fc.constantFrom('00000000-0000-0000-0000-000000000000', 'FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF', '%ZZ', '%00', '%2e%2e%2f%2e%2e', '..', '%E0%A4%A', '%C0%AF', 'null', 'undefined', '-1', "1e309", "1'%20or%20'1'%3D'1", '%27%3B%20drop%20table%20durable_runs%3B--'),
    fc.string({ unit: 'binary', maxLength: 60 }).map((s) => pct(new TextEncoder().encode(s))),
    fc.uint8Array({ minLength: 1, maxLength: 40 }).map(pct),
    fc.integer({ min: 200, max: 2500 }).map((n) => 'a'.repeat(n)),
  );

const query = fc.oneof(
  fc.constant(''),
  fc
    .array(
      fc.tuple(
        fc.oneof(fc.constantFrom('status', 'limit', 'cursor', '__proto__', 'constructor', 'status[]', 'limit[a]'), fc.string({ maxLength: 10 })),
        fc.oneof(fc.constantFrom('pending', 'completed', '0', '-1', '101', '1.5', 'NaN', '1e3', '', 'bnVsbA', 'MXwx'), fc.string({ unit: 'binary', maxLength: 30 })),
      ),
      { maxLength: 4 },
    )
    .map((pairs) => `?${pairs.map(([k, v]) => `${pct(new TextEncoder().encode(k))}=${pct(new TextEncoder().encode(v))}`).join('&')}`),
);

const contentType = fc.option(
  fc.oneof(
    fc.constantFrom(
      'application/json',
      'application/json; charset=utf-8',
      'application/json; charset=UTF-8',
      'application/json; charset=latin1',
      'application/json; charset=utf-16',
      'application/json; charset=bogus',
      'application/merge-patch+json',
      'application/problem+json',
      'text/plain',
      'text/json',
      'application/x-www-form-urlencoded',
      'multipart/form-data; boundary=xyz',
      'application/xml',
      '*/*',
      'application',
      'application/jsonx',
      ';;;',
    ),
    headerText(80),
  ),
  { nil: undefined, freq: 5 },
);

const idempotencyKey = fc.option(
  fc.oneof(
    fc.uuid(),
    fc.constantFrom('', ' ', '""', '"a"b"', '"\\x"', '"ok"', '\t', 'a'.repeat(255), 'a'.repeat(256), 'key with spaces', 'caf\u00e9', '\u00ff\u00fe'),
    headerText(300),
    fc.array(fc.uuid(), { minLength: 2, maxLength: 2 }),
  ),
  { nil: undefined, freq: 4 },
);

const correlationId = fc.option(
  fc.oneof(fc.constantFrom('', '-', '../../etc/passwd', 'a'.repeat(129), 'ok-123', '<script>alert(1)</script>', '\u00e9t\u00e9', '${jndi:ldap://x}'), headerText(200)),
  { nil: undefined, freq: 3 },
);

const authorization = fc.oneof(
  { weight: 8, arbitrary: fc.constant('VALID') },
  { weight: 1, arbitrary: fc.constant(undefined) },
  { weight: 1, arbitrary: fc.oneof(fc.constantFrom('Bearer', 'Bearer a.b.c', 'Basic Zm9vOmJhcg==', 'Bearer \u00ff.\u00ff.\u00ff'), headerText(300)) },
);

const contentEncoding = fc.option(fc.constantFrom('gzip', 'deflate', 'br', 'identity', 'compress', 'x-evil', 'gzip, gzip'), { nil: undefined, freq: 8 });

const SAMPLES: Record<string, unknown> = { run: CLASS_A_SUBMISSION, decision: { decision: 'approve', comment: 'fine' } };

/** A known-good body with one field replaced, removed or added: close to valid, so validation is probed. */
function mutated(sample: unknown) {
  const leaves: string[][] = [];
  const walk = (v: unknown, path: string[]) => {
    if (v && typeof v === 'object') for (const [k, c] of Object.entries(v)) walk(c, [...path, k]);
    else leaves.push(path);
  };
  walk(sample, []);
  if (leaves.length === 0) leaves.push(['x']);
  return fc
    .tuple(
      fc.constantFrom(...leaves),
      fc.oneof(
        fc.constant(undefined),
        fc.jsonValue({ maxDepth: 2 }),
        fc.string({ unit: 'binary', maxLength: 50 }),
        fc.constantFrom(-1, 1e308, -0, 2 ** 53 + 1, '', ' ', 'a\u0000b', '\ud800', '\udfff\ud800', 'x'.repeat(5000), null, [], {}, true, 'SA', 'https://x', 'javascript:alert(1)'),
      ),
      fc.boolean(),
    )
    .map(([path, value, extra]) => {
      const copy = structuredClone(sample) as Record<string, any>;
      let cur = copy;
      for (const k of path.slice(0, -1)) cur = cur[k];
      if (value === undefined) delete cur[path[path.length - 1]!];
      else cur[path[path.length - 1]!] = value;
      if (extra) copy.__proto__unexpected = 1;
      return copy;
    });
}

const deep = fc.tuple(fc.integer({ min: 100, max: 30_000 }), fc.boolean()).map(([n, arr]) => (arr ? '['.repeat(n) + ']'.repeat(n) : '{"a":'.repeat(n) + '1' + '}'.repeat(n)));

function bodyFor(sample: unknown) {
  return fc.oneof(
    { weight: 2, arbitrary: fc.constant(undefined) },
    // The known-good body itself, so a keyed request reaches its handler (and a refusal there is stored).
    { weight: 2, arbitrary: fc.constant(Buffer.from(JSON.stringify(sample))) },
    { weight: 4, arbitrary: mutated(sample).map((v) => Buffer.from(JSON.stringify(v))) },
    { weight: 2, arbitrary: fc.json({ maxDepth: 4 }).map((s) => Buffer.from(s)) },
    { weight: 2, arbitrary: fc.anything({ maxDepth: 3 }).map((v) => Buffer.from(JSON.stringify(v) ?? 'undefined')) },
    { weight: 2, arbitrary: fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)) },
    // Valid JSON with raw invalid UTF-8 spliced into a string.
    { weight: 2, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 8 }).map((b) => Buffer.concat([Buffer.from('{"partner":{"name":"'), Buffer.from(b.map((x) => x | 0x80)), Buffer.from('"}}')])) },
    // Escapes JSON allows but PostgreSQL cannot store.
    { weight: 1, arbitrary: fc.constantFrom('\\u0000', '\\ud800', '\\udc00x', '\\ud83d\\ude00\\ud800').map((esc) => Buffer.from(JSON.stringify(sample).replace(/"([^"]+)"(?=,|\})/, `"$1${esc}"`))) },
    { weight: 1, arbitrary: deep.map((s) => Buffer.from(s)) },
    { weight: 1, arbitrary: fc.integer({ min: BODY_LIMIT + 1, max: 4 * BODY_LIMIT }).map((n) => Buffer.from(JSON.stringify({ pad: 'x'.repeat(n) }))) },
    { weight: 1, arbitrary: fc.constantFrom('', ' ', 'null', '1', '"x"', 'true', '{', '[', '{"a":1,}', "{'a':1}", '{"a":NaN}', '{"__proto__":{"polluted":1}}', '{"constructor":{"prototype":{"polluted":1}}}').map((s) => Buffer.from(s)) },
  );
}

// --- persistence snapshot ---------------------------------------------------------------------

let db: pg.Client;

/** `method path` is a 405 problem+json naming `allow` (a HEAD answer has no body to read). */
async function expectMethodNotAllowed(method: string, path: string, headers: Record<string, string>, allow: string): Promise<void> {
  const res = await send({ method, path, headers, body: undefined });
  expect(res.status, `${method} ${path}`).toBe(405);
  expect(res.headers.allow, `${method} ${path}`).toBe(allow);
  expect(res.headers['content-type'], `${method} ${path}`).toContain('application/problem+json');
  if (method !== 'HEAD') expect(JSON.parse(res.text), `${method} ${path}`).toMatchObject({ status: 405, code: 'method_not_allowed' });
}

async function snapshot() {
  const { rows } = await db.query(
    `select (select count(*)::int from durable_runs where tenant_id = $1) as runs,
            (select count(*)::int from idempotency_keys where tenant_id = $1) as keys,
            (select count(*)::int from approval_decisions where tenant_id = $1) as decisions,
            (select coalesce(string_agg(id::text || status, ',' order by id), '') from approval_requests where tenant_id = $1) as approvals,
            (select coalesce(string_agg(status, ',' order by status), '') from idempotency_keys where tenant_id = $1) as key_states`,
    [tenant],
  );
  return rows[0] as { runs: number; keys: number; decisions: number; approvals: string; key_states: string };
}

async function newestKey() {
  const { rows } = await db.query(`select status, response_status from idempotency_keys where tenant_id = $1 order by created_at desc limit 1`, [tenant]);
  return rows[0] as { status: string; response_status: number } | undefined;
}

// --- the property -----------------------------------------------------------------------------

interface Endpoint {
  method: string;
  path: string;
  sample: unknown;
}

function endpoints(): Endpoint[] {
  const list: Endpoint[] = stack.container.routes.map((r) => ({
    method: r.method.toUpperCase(),
    path: r.path,
    sample: r.path.endsWith('/decision') ? SAMPLES.decision : r.path.endsWith('/golden-path/run') ? SAMPLES.run : {},
  }));
  // The endpoints outside the route table: probes, API documents, the operator dashboard, a 404.
  for (const p of ['/healthz', '/readyz', '/metrics', '/openapi.json', '/docs', '/admin/queues', '/admin/queues/api/queues', '/api/v1/no-such-route']) list.push({ method: 'GET', path: p, sample: {} });
  list.push({ method: 'PUT', path: '/admin/queues/api/queues/golden-path/retry/failed', sample: {} });
  return list;
}

function requestFor(ep: Endpoint) {
  return fc
    .record({
      method: fc.oneof({ weight: 9, arbitrary: fc.constant(ep.method) }, { weight: 1, arbitrary: fc.constantFrom('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'HEAD') }),
      params: fc.array(pathParam(), { minLength: 3, maxLength: 3 }),
      query,
      contentType,
      idempotencyKey,
      correlationId,
      authorization,
      contentEncoding,
      body: bodyFor(ep.sample),
      real: fc.nat(),
      // Half the requests carry a well-formed envelope, so hostile bodies reach validation and handlers.
      clean: fc.boolean(),
      key: fc.uuid(),
    })
    .map((g): HostileRequest => {
      let i = 0;
      const path = ep.path.replace(/:[A-Za-z_]+/g, () => {
        const p = g.params[i++]!;
        return p === 'REAL' || g.clean ? realIds[g.real % realIds.length]! : p;
      });
      if (g.clean) {
        const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'idempotency-key': g.key };
        return { method: ep.method, path: path + (g.query.length < 40 ? g.query : ''), headers, body: g.body };
      }
      const headers: Record<string, string | string[]> = {};
      if (g.contentType !== undefined) headers['content-type'] = g.contentType;
      if (g.idempotencyKey !== undefined) headers['idempotency-key'] = g.idempotencyKey;
      if (g.correlationId !== undefined) headers['x-correlation-id'] = g.correlationId;
      if (g.contentEncoding !== undefined) headers['content-encoding'] = g.contentEncoding;
      if (g.authorization === 'VALID') headers.authorization = `Bearer ${token}`;
      else if (g.authorization !== undefined) headers.authorization = g.authorization;
      return { method: g.method, path: path + g.query, headers, body: g.method === 'HEAD' ? undefined : g.body };
    });
}

/**
 * A refusal before any handler ran: an edge code, or a 404 or 403 the router and the role check give
 * (their codes are shared with refusals a handler decides, so their detail tells them apart).
 */
function refusedBeforeHandler(problem: { code: string; detail?: string }): boolean {
  if (EDGE_CODES.has(problem.code)) return true;
  if (problem.code === 'not_found') return problem.detail === 'The route does not exist.';
  if (problem.code === 'forbidden') return /^(This operation needs one of the roles|The dashboard spans tenants)/.test(problem.detail ?? '');
  return false;
}

/** Whether the request carries one Idempotency-Key the idempotency layer accepts, on a method it guards. */
function claimsKey(req: HostileRequest): boolean {
  const key = req.headers['idempotency-key'];
  if (!['POST', 'PUT', 'PATCH'].includes(req.method) || typeof key !== 'string') return false;
  try {
    return parseIdempotencyKey(key) !== undefined;
  } catch {
    return false;
  }
}

async function checkOne(req: HostileRequest) {
  const before = await snapshot();
  const res = await send(req);
  const where = `${req.method} ${req.path.slice(0, 200)} → ${res.status} ${res.text.slice(0, 300)}`;
  expect(res.status, where).toBeLessThan(500);
  expect(isValidCorrelationId(res.headers['x-correlation-id']), where).toBe(true);
  if (res.status < 400) return;
  expect(String(res.headers['content-type']), where).toMatch(/^application\/problem\+json/);
  if (req.method !== 'HEAD') {
    const problem = JSON.parse(res.text);
    expect(problem, where).toMatchObject({ status: res.status, type: expect.any(String), title: expect.any(String), code: expect.any(String) });
    expect(res.text, where).not.toMatch(/at .+\.ts:\d+|node_modules|SELECT |select .* from /);
    const after = await snapshot();
    expect({ runs: after.runs, decisions: after.decisions, approvals: after.approvals }, where).toEqual({ runs: before.runs, decisions: before.decisions, approvals: before.approvals });
    // Decided by the request and its answer, never by what the database shows afterwards.
    if (refusedBeforeHandler(problem) || !claimsKey(req) || res.headers['idempotent-replayed'] === 'true') {
      // Refused at the edge, sent without a usable key, or a replay: not even a key is left behind.
      expect({ keys: after.keys, key_states: after.key_states }, where).toEqual({ keys: before.keys, key_states: before.key_states });
    } else {
      // A keyed request its handler refused (e.g. 404 unknown approval): the refusal is the key's
      // stored outcome by design, and nothing else is written.
      expect(after.keys, where).toBe(before.keys + 1);
      expect(await newestKey(), where).toEqual({ status: 'completed', response_status: res.status });
    }
  }
}

beforeAll(async () => {
  stack = await startStack({ env: { RATE_LIMIT_PER_MINUTE: '0' } });
  // One superuser connection for the before/after snapshots (observation only, never isolation).
  db = new pg.Client({ connectionString: stack.db.adminUrl });
  await db.connect();
  // Real ids of this tenant: a completed run with its approval and evidence, and a pending approval
  // submitted by the very principal the property uses (so it can never approve it by accident).
  token = await stack.token({ tenantId: tenant, sub: 'prop-user', roles: ['approver'] });
  const worker = await stack.spawnWorker();
  const submit = (body: unknown) => api(stack, 'POST', '/api/v1/golden-path/run', { token, body, headers: { 'Idempotency-Key': randomUUID() } });
  const a = await submit(CLASS_A_SUBMISSION);
  const b = await submit(SAMPLE_SUBMISSION);
  const done = await waitFor(async () => {
    const r = (await api(stack, 'GET', `/api/v1/golden-path/runs/${a.json.run_id}`, { token })).json;
    return r?.status === 'completed' ? r : undefined;
  }, { timeoutMs: 60_000, what: 'class A run' });
  const waiting = await waitFor(async () => {
    const r = (await api(stack, 'GET', `/api/v1/golden-path/runs/${b.json.run_id}`, { token })).json;
    return r?.status === 'waiting' ? r : undefined;
  }, { timeoutMs: 60_000, what: 'class B run waiting' });
  realIds = [done.run_id, done.steps[2].output.approval_request_id, done.steps[3].output.evidence_pack_id, waiting.run_id, waiting.steps[2].output.approval_request_id];
  // No worker from here on: a run a lucky request creates stays put and cannot change the snapshot.
  worker.kill();
  await worker.exited;
  // A stack, a worker's start (up to 90 s) and two runs (up to 60 s each): more than the default hook timeout (60 s) on a loaded machine.
}, 180_000);
afterAll(async () => {
  agent.destroy();
  await db?.end();
  await stack?.stop();
});

describe('hostile input on every endpoint', () => {
  it('covers every route the container declares', () => {
    const routes = endpoints().map((e) => `${e.method} ${e.path}`);
    expect(routes).toContain('POST /api/v1/golden-path/run');
    expect(routes).toContain('POST /api/v1/approvals/:id/decision');
    expect(routes.length).toBeGreaterThanOrEqual(stack.container.routes.length);
  });

  it('never a 5xx, always problem+json for 4xx, nothing persisted for a refused request', { timeout: 600_000 }, async () => {
    for (const ep of endpoints()) {
      await fc.assert(fc.asyncProperty(requestFor(ep), checkOne), { numRuns: NUM_RUNS, endOnFailure: false });
    }
  });

  it.each([
    ['NUL in a string', '{"decision":"approve","comment":"a\\u0000b"}'],
    ['an unpaired surrogate', '{"decision":"approve","comment":"a\\ud800b"}'],
    ['an unpaired surrogate in a key', '{"decision":"approve","\\udc00":1}'],
  ])('text PostgreSQL cannot store (%s) is a 400 before any handler, on a real pending approval', async (_name, body) => {
    const approval = realIds[4]!;
    const before = await snapshot();
    const res = await send({ method: 'POST', path: `/api/v1/approvals/${approval}/decision`, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'idempotency-key': randomUUID() }, body: Buffer.from(body) });
    expect(res.status).toBe(400);
    expect(JSON.parse(res.text).code).toBe('validation_failed');
    expect(await snapshot()).toEqual(before);
  });

  it("an amount finer than its currency's minor unit is 422 naming the field, and nothing is persisted (50,000.004 SAR would have classed as 50,000)", async () => {
    const before = await snapshot();
    const economics = { ...(SAMPLE_SUBMISSION as { economics: Record<string, number> }).economics, onboarding_cost: 50_000.004 };
    const res = await send({ method: 'POST', path: '/api/v1/golden-path/run', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'idempotency-key': randomUUID() }, body: Buffer.from(JSON.stringify({ ...SAMPLE_SUBMISSION, currency: 'SAR', economics })) });
    expect(res.status).toBe(422);
    expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
    const problem = JSON.parse(res.text) as { code: string; errors: { path: string; message: string }[] };
    expect(problem.code).toBe('validation_failed');
    expect(problem.errors).toEqual([{ path: 'economics.onboarding_cost', message: 'at most 2 decimals in SAR (its ISO 4217 minor unit)' }]);
    expect(await snapshot()).toEqual(before);
  });

  it('a body over BODY_LIMIT is 413 problem+json, on every mutating API route', async () => {
    // (A caller without a route's role is refused before the body is read: 403 there, as on the
    // operator dashboard. This caller holds every role a route asks for.)
    const allRoles = await stack.token({ tenantId: tenant, sub: 'prop-user', roles: ['approver', 'admin', OPERATOR_ROLE] });
    for (const ep of endpoints().filter((e) => e.method !== 'GET' && e.path.startsWith('/api/'))) {
      const path = ep.path.replace(/:[A-Za-z_]+/g, realIds[4]!);
      const res = await send({ method: ep.method, path, headers: { authorization: `Bearer ${allRoles}`, 'content-type': 'application/json', 'idempotency-key': randomUUID() }, body: Buffer.from(JSON.stringify({ pad: 'x'.repeat(BODY_LIMIT + 1) })) });
      expect(res.status, `${ep.method} ${ep.path}`).toBe(413);
      expect(JSON.parse(res.text).code).toBe('payload_too_large');
    }
  });

  it('the body is read only after the caller and the route are known: 401 or 404 first, whatever the body', async () => {
    const before = await snapshot();
    const json = { 'content-type': 'application/json', 'idempotency-key': randomUUID() };
    const oversized = Buffer.from(JSON.stringify({ pad: 'x'.repeat(BODY_LIMIT + 1) }));
    for (const body of [Buffer.from('{bad'), oversized]) {
      const anonymous = await send({ method: 'POST', path: '/api/v1/golden-path/run', headers: json, body });
      expect(anonymous.status).toBe(401);
      expect(JSON.parse(anonymous.text).code).toBe('unauthorized');
      const nowhere = await send({ method: 'POST', path: '/api/v1/nonexistent', headers: { ...json, authorization: `Bearer ${token}` }, body });
      expect(nowhere.status).toBe(404);
      expect(String(nowhere.headers['content-type'])).toMatch(/^application\/problem\+json/);
    }
    expect(await snapshot()).toEqual(before);
  });

  it('a bare JSON value is refused as not an object, and a missing body fails validation, not the media type', async () => {
    const before = await snapshot();
    const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
    for (const bare of ['null', '42', '"text"']) {
      const res = await send({ method: 'POST', path: '/api/v1/golden-path/run', headers: { ...headers, 'idempotency-key': randomUUID() }, body: Buffer.from(bare) });
      expect(res.status, bare).toBe(400);
      expect(JSON.parse(res.text), bare).toMatchObject({ code: 'malformed_json', detail: expect.stringContaining('JSON object') });
    }
    const empty = await send({ method: 'POST', path: '/api/v1/golden-path/run', headers: { ...headers, 'idempotency-key': randomUUID() }, body: undefined });
    expect(empty.status).toBe(422);
    expect(JSON.parse(empty.text).code).toBe('validation_failed');
    expect(await snapshot()).toEqual(before);
  });

  it('a route asked with a method it does not answer is 405 with Allow; a path no route has is 404', async () => {
    const before = await snapshot();
    const auth = { authorization: `Bearer ${token}` };
    for (const [method, path, allow] of [
      ['DELETE', '/api/v1/golden-path/runs', 'GET, HEAD'],
      ['GET', '/api/v1/golden-path/run', 'POST'],
      ['PATCH', '/api/v1/approval-policy', 'GET, HEAD, PUT'],
      ['PUT', `/api/v1/approvals/${randomUUID()}/decision`, 'POST'],
    ] as const) {
      await expectMethodNotAllowed(method, path, auth, allow);
    }
    expect((await send({ method: 'DELETE', path: '/api/v1/nothing-here', headers: auth, body: undefined })).status).toBe(404);
    expect(await snapshot()).toEqual(before);
  });

  it('the operational endpoints too: another method is 405 Allow: GET, HEAD, and OPTIONS 204 with it, not a 404 saying the route does not exist', async () => {
    // docs/api.md, "Status codes": 405 with Allow when the path exists under other methods — any path
    // the API serves, not only those under /api/v1 (a POST /healthz from a misconfigured probe).
    for (const path of ['/healthz', '/readyz', '/metrics', '/openapi.json', '/docs']) {
      for (const method of ['POST', 'PUT', 'DELETE']) await expectMethodNotAllowed(method, path, {}, 'GET, HEAD');
      const options = await send({ method: 'OPTIONS', path, headers: {}, body: undefined });
      expect(options.status, `OPTIONS ${path}`).toBe(204);
      expect(options.headers.allow, `OPTIONS ${path}`).toBe('GET, HEAD');
      expect((await send({ method: 'GET', path, headers: {}, body: undefined })).status, `GET ${path}`).toBe(200);
    }
  });

  it("a literal path segment is not a path id: GET …/runs/cancel is 405 Allow: POST, not a 404 for an invalid run id", async () => {
    // `…/runs/cancel` (POST) and `…/runs/:id` (GET) share a shape: the literal `cancel` is no run id,
    // so the path exists under POST only, with or without a token (the route is checked first).
    const before = await snapshot();
    const auth = { authorization: `Bearer ${token}` };
    for (const [method, path, allow] of [
      ['GET', '/api/v1/golden-path/runs/cancel', 'POST'],
      ['HEAD', '/api/v1/golden-path/runs/cancel', 'POST'],
      ['DELETE', '/api/v1/golden-path/runs/cancel', 'POST'],
      ['GET', '/api/v1/partner-offboarding/runs/cancel', 'POST'],
      ['GET', `/api/v1/webhook-endpoints/${randomUUID()}/deliveries/resend`, 'POST'],
    ] as const) {
      for (const headers of [auth, {}]) {
        await expectMethodNotAllowed(method, path, headers, allow);
      }
    }
    // OPTIONS says the same as a 405's Allow (Express's own answer listed GET for …/runs/cancel).
    for (const [path, allow] of [
      ['/api/v1/golden-path/runs/cancel', 'POST'],
      ['/api/v1/golden-path/runs', 'GET, HEAD'],
      [`/api/v1/golden-path/runs/${randomUUID()}`, 'GET, HEAD'],
    ] as const) {
      const res = await send({ method: 'OPTIONS', path, headers: {}, body: undefined });
      expect(res.headers.allow, `OPTIONS ${path}`).toBe(allow);
      expect(res.status, `OPTIONS ${path}`).toBe(204);
    }
    expect((await send({ method: 'OPTIONS', path: '/api/v1/nothing-here', headers: {}, body: undefined })).status).toBe(404);
    // A path id that is no UUID and names no other route is still the documented 404 validation_failed.
    const bad = await send({ method: 'GET', path: '/api/v1/golden-path/runs/not-a-run', headers: auth, body: undefined });
    expect(bad.status).toBe(404);
    expect(JSON.parse(bad.text)).toMatchObject({ code: 'validation_failed', errors: [{ path: 'id' }] });
    expect(await snapshot()).toEqual(before);
  });

  it('a path id that is no UUID and no literal of another route: the route is checked first, as for a valid id (405 and OPTIONS say the same Allow)', async () => {
    // The route exists before its path id is validated (docs/api.md, "Status codes"): under another
    // method the answer is the 405 a valid id gets, not a 404 that says the route does not exist, and
    // OPTIONS names the same methods (204, not Express's own text/plain answer).
    const before = await snapshot();
    const auth = { authorization: `Bearer ${token}` };
    for (const [method, path, allow] of [
      ['PUT', '/api/v1/golden-path/runs/not-a-run', 'GET, HEAD'],
      ['PUT', '/api/v1/webhook-endpoints/not-an-endpoint', 'DELETE, GET, HEAD, PATCH'],
      ['DELETE', '/api/v1/webhook-endpoints/not-an-endpoint/deliveries/resend', 'GET, HEAD, POST'],
    ] as const) {
      for (const headers of [auth, {}]) {
        await expectMethodNotAllowed(method, path, headers, allow);
      }
      const options = await send({ method: 'OPTIONS', path, headers: {}, body: undefined });
      expect(options.status, `OPTIONS ${path}`).toBe(204);
      expect(options.headers.allow, `OPTIONS ${path}`).toBe(allow);
    }
    // Under a method the path's template answers, the id is validated (after the token): 404 validation_failed.
    const admin = { authorization: `Bearer ${await stack.token({ tenantId: tenant, sub: 'path-admin', roles: ['admin'] })}` };
    for (const [method, path] of [
      ['GET', '/api/v1/webhook-endpoints/not-an-endpoint/deliveries/resend'],
      ['POST', '/api/v1/webhook-endpoints/not-an-endpoint/deliveries/resend'],
    ] as const) {
      const res = await send({ method, path, headers: { ...admin, 'content-type': 'application/json', 'idempotency-key': randomUUID() }, body: undefined });
      expect(res.status, `${method} ${path}`).toBe(404);
      expect(JSON.parse(res.text), `${method} ${path}`).toMatchObject({ code: 'validation_failed', errors: expect.arrayContaining([expect.objectContaining({ path: 'id' })]) });
    }
    // Not even valid percent-encoding is refused under every method, OPTIONS too: 404 validation_failed.
    for (const method of ['PUT', 'OPTIONS']) {
      const res = await send({ method, path: '/api/v1/golden-path/runs/%FF', headers: {}, body: undefined });
      expect(res.status, method).toBe(404);
      expect(JSON.parse(res.text), method).toMatchObject({ code: 'validation_failed', errors: [{ path: 'id' }] });
    }
    expect(await snapshot()).toEqual(before);
  });

  it('a forged list cursor is a 400, not a database error', async () => {
    for (const raw of ['1', '+275760-09-13T00:00:00.000Z', '0000-01-01T00:00:00.000Z', '2024-02-30T00:00:00.000Z', '2024-01-01']) {
      const cursor = Buffer.from(`${raw}|${randomUUID()}`).toString('base64url');
      const res = await send({ method: 'GET', path: `/api/v1/golden-path/runs?cursor=${cursor}`, headers: { authorization: `Bearer ${token}` }, body: undefined });
      expect(res.status, raw).toBe(400);
    }
  });

  // The 400 says what was checked, and no more: the cursor's shape (docs/api.md, Conventions). It once
  // read "not a cursor returned by this API", a check the API does not make (a well-shaped cursor it
  // never issued is read as a position and answers 200, as the test below shows), so a client holding
  // a cursor it did get from the API, altered on the way, was told the API had not issued it.
  it('a malformed list cursor is a 400 problem+json that says it is malformed, and stores nothing', async () => {
    const before = await snapshot();
    const res = await send({ method: 'GET', path: '/api/v1/golden-path/runs?cursor=nonsense', headers: { authorization: `Bearer ${token}` }, body: undefined });
    expect(res.status).toBe(400);
    expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(JSON.parse(res.text)).toEqual({
      type: 'https://docs.dealix.dev/problems/validation_failed',
      title: 'Invalid cursor',
      status: 400,
      code: 'validation_failed',
      errors: [{ path: 'cursor', message: "malformed cursor: pass a page's next_cursor unchanged" }],
      request_id: expect.any(String),
    });
    expect(await snapshot()).toEqual(before);
  });

  // The decoder skips what is not base64url and the split read the first two fields: a cursor with a
  // field more, or with characters slipped in, read as the cursor it contained (200), not the 400 that
  // docs/api.md promises for a cursor not shaped as this API encodes one.
  it('a list cursor altered in any way is a 400: a field more, padding, characters outside base64url', async () => {
    const fields = `2026-01-01T00:00:00.000Z|${randomUUID()}`;
    const issued = Buffer.from(fields).toString('base64url');
    const list = (cursor: string) =>
      send({ method: 'GET', path: `/api/v1/golden-path/runs?cursor=${encodeURIComponent(cursor)}`, headers: { authorization: `Bearer ${token}` }, body: undefined });
    expect((await list(issued)).status).toBe(200);
    const altered = {
      'a field more': Buffer.from(`${fields}|x`).toString('base64url'),
      'an empty field more': Buffer.from(`${fields}|`).toString('base64url'),
      padding: `${issued}==`,
      'a dot inside': `${issued.slice(0, 10)}.${issued.slice(10)}`,
      'a tilde at the end': `${issued}~`,
      'a space': `${issued.slice(0, 10)} ${issued.slice(10)}`,
    };
    const statuses = Object.fromEntries(await Promise.all(Object.entries(altered).map(async ([what, cursor]) => [what, (await list(cursor)).status])));
    expect(statuses).toEqual(Object.fromEntries(Object.keys(altered).map((what) => [what, 400])));
  });
});
