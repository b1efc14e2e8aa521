/**
 * Tenant isolation over HTTP, driven by the app's own route table so that a route added later is
 * covered without anyone touching this file: a valid token of tenant A names tenant B's real ids on
 * every route with a path parameter, and the answer must be the one a made-up id gets — the same
 * status, problem body and headers, so it does not even tell that the id exists — while not one of
 * B's rows changes. Beside it: roles that only look like a route's role open nothing; list cursors
 * crafted from B's rows show A only A's; one Idempotency-Key under one subject in two tenants is two
 * requests. The single routes' own tests check the same for their routes one by one
 * (hostile-tokens, cancel-run, webhook-*, approval-policy-changes); this one is the sweep over all.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, CLASS_A_SUBMISSION, newTenant, OFFBOARDING_SUBMISSION, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { MUTATING_METHODS, type HttpMethod, type RouteDef } from '../../src/platform/http/route.ts';

const LONG = 180_000;
const tenantA = newTenant();
const tenantB = newTenant();
let stack: TestStack;
/** Tenant B's real ids, by the kind of thing a path names. */
const theirs = {} as Record<'goldenRun' | 'offboardingRun' | 'approval' | 'evidence' | 'change' | 'endpoint' | 'delivery', string>;
const tok = {} as Record<'full' | 'none' | 'lookalike' | 'bAdmin', string>;

/** Which of B's ids each path parameter gets, by the route's prefix; a route with parameters not listed here fails the sweep. */
const TARGETS: Array<[RegExp, () => Record<string, string>]> = [
  [/^\/api\/v1\/golden-path\/runs\/:id/, () => ({ id: theirs.goldenRun })],
  [/^\/api\/v1\/partner-offboarding\/runs\/:id/, () => ({ id: theirs.offboardingRun })],
  [/^\/api\/v1\/approvals\/:id/, () => ({ id: theirs.approval })],
  [/^\/api\/v1\/evidence\/:id/, () => ({ id: theirs.evidence })],
  [/^\/api\/v1\/approval-policy\/changes\/:id/, () => ({ id: theirs.change })],
  [/^\/api\/v1\/webhook-endpoints\/:id/, () => ({ id: theirs.endpoint, delivery_id: theirs.delivery })],
  // Operators name tenants by design (ADR 0014); a tenant's token, whatever its tenant roles, is refused alike for B and for no one.
  [/^\/api\/v1\/operator\/tenants\/:tenant_id/, () => ({ tenant_id: tenantB })],
];

/** A body the route accepts, so that the request reaches its handler (the lookup) rather than stopping at validation. */
const BODIES: Record<string, unknown> = {
  'post /api/v1/approvals/:id/decision': { decision: 'approve' },
  'patch /api/v1/webhook-endpoints/:id': { description: 'taken over' },
  'post /api/v1/webhook-endpoints/:id/deliveries/resend': { since: '2020-01-01T00:00:00Z', status: ['failed', 'delivered'] },
  'put /api/v1/operator/tenants/:tenant_id/limits': { max_active_runs: 1, max_runs_in_flight: 1 },
};

const paramRoutes = () => stack.container.routes.filter((r) => r.path.includes('/:'));
const fill = (template: string, ids: Record<string, string>) =>
  template.replace(/:([A-Za-z_]+)/g, (_m, name: string) => {
    if (!ids[name]) throw new Error(`no id for :${name} in ${template}`);
    return ids[name]!;
  });
const targetOf = (def: RouteDef) => {
  const found = TARGETS.find(([re]) => re.test(def.path));
  if (!found) throw new Error(`${def.method.toUpperCase()} ${def.path}: a route with path parameters the sweep has no ids for; add it to TARGETS`);
  return found[1]();
};
const randomIds = (ids: Record<string, string>) => Object.fromEntries(Object.keys(ids).map((k) => [k, randomUUID()]));

function send(def: RouteDef, path: string, token: string | undefined) {
  const body = BODIES[`${def.method} ${def.path}`];
  const headers: Record<string, string> = MUTATING_METHODS.has(def.method as HttpMethod) ? { 'Idempotency-Key': randomUUID() } : {};
  return api(stack, def.method.toUpperCase(), path, { headers, ...(token ? { token } : {}), ...(body !== undefined ? { body } : {}) });
}

/** Headers that differ from one request to the next whatever it asks (ids, time, and what hashes or measures a body carrying its request id). */
const PER_REQUEST = new Set(['date', 'x-request-id', 'x-correlation-id', 'etag', 'content-length', 'traceparent']);

/** An answer with what is per request taken out, and the ids it was asked about written as their parameter names. */
function comparable(res: Awaited<ReturnType<typeof api>>, ids: Record<string, string>) {
  let text = res.text;
  for (const [name, id] of Object.entries(ids)) text = text.split(id).join(`:${name}`);
  const body = text ? (JSON.parse(text) as Record<string, unknown>) : undefined;
  if (body) delete body.request_id;
  const headers = Object.fromEntries([...res.headers].filter(([k]) => !PER_REQUEST.has(k)));
  return { status: res.status, headers, body };
}

/** Every row of tenant B, table by table, as the superuser reads it. */
async function rowsOfB(): Promise<Record<string, unknown[]>> {
  const { rows: tables } = await stack.db.admin(
    `select c.table_name from information_schema.columns c join information_schema.tables t using (table_schema, table_name)
      where c.table_schema = 'public' and c.column_name = 'tenant_id' and t.table_type = 'BASE TABLE' order by 1`,
  );
  const out: Record<string, unknown[]> = {};
  for (const { table_name: table } of tables) out[table] = (await stack.db.admin(`select * from "${table}" where tenant_id = $1 order by 1`, [tenantB])).rows;
  return out;
}

async function waitRun(token: string, path: string, statuses: string[]) {
  return waitFor(
    async () => {
      const r = await api(stack, 'GET', path, { token });
      return statuses.includes(r.json?.status) ? r.json : undefined;
    },
    { what: `${path} ${statuses.join('|')}`, timeoutMs: 60_000 },
  );
}

beforeAll(async () => {
  stack = await startStack({ env: { WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true' } });
  tok.full = await stack.token({ tenantId: tenantA, sub: 'mallory', roles: ['admin', 'approver'] });
  tok.none = await stack.token({ tenantId: tenantA, sub: 'eve' });
  // Exact role names only: neither case, nor spaces, nor a prefix or suffix make one.
  tok.lookalike = await stack.token({ tenantId: tenantA, sub: 'eve', roles: ['Admin', 'APPROVER', ' admin', 'approver ', 'admins', 'platform-operator ', 'Platform-Operator', 'admin,approver'] });
  tok.bAdmin = await stack.token({ tenantId: tenantB, sub: 'bob', roles: ['admin'] });
  const key = () => ({ 'Idempotency-Key': randomUUID() });
  // Tenant B's data, of every kind a path names: a completed run (its approval and evidence pack), a run
  // waiting for its approval, a partner offboarding, a pending policy change, a webhook endpoint with a delivery.
  const worker = await stack.spawnWorker();
  const done = await api(stack, 'POST', '/api/v1/golden-path/run', { token: tok.bAdmin, body: CLASS_A_SUBMISSION, headers: key() });
  const waiting = await api(stack, 'POST', '/api/v1/golden-path/run', { token: tok.bAdmin, body: SAMPLE_SUBMISSION, headers: key() });
  const offboarding = await api(stack, 'POST', '/api/v1/partner-offboarding/run', { token: tok.bAdmin, body: OFFBOARDING_SUBMISSION, headers: key() });
  const completed = await waitRun(tok.bAdmin, `/api/v1/golden-path/runs/${done.json.run_id}`, ['completed']);
  const pending = await waitRun(tok.bAdmin, `/api/v1/golden-path/runs/${waiting.json.run_id}`, ['waiting']);
  await waitRun(tok.bAdmin, `/api/v1/partner-offboarding/runs/${offboarding.json.run_id}`, ['completed']);
  // Nothing of B's moves on its own from here: no worker runs its jobs, its SLA timer or its delivery.
  worker.kill();
  await worker.exited;
  theirs.goldenRun = pending.run_id;
  theirs.approval = pending.steps[2].output.approval_request_id;
  theirs.evidence = completed.steps[3].output.evidence_pack_id;
  theirs.offboardingRun = offboarding.json.run_id;
  const policy = await api(stack, 'GET', '/api/v1/approval-policy', { token: tok.bAdmin });
  const change = await api(stack, 'PUT', '/api/v1/approval-policy', { token: tok.bAdmin, headers: key(), body: { ...policy.json.policy, class_a_max_cost: policy.json.policy.class_a_max_cost + 1 } });
  expect(change.status, change.text).toBe(202);
  theirs.change = change.json.id;
  const endpoint = await api(stack, 'POST', '/api/v1/webhook-endpoints', { token: tok.bAdmin, headers: key(), body: { url: 'http://127.0.0.1:9/b', events: ['run.completed'] } });
  expect(endpoint.status, endpoint.text).toBe(201);
  theirs.endpoint = endpoint.json.id;
  const test = await api(stack, 'POST', `/api/v1/webhook-endpoints/${theirs.endpoint}/test`, { token: tok.bAdmin, headers: key() });
  expect(test.status, test.text).toBe(202);
  theirs.delivery = test.json.id;
  // Tenant A's own rows, so that its lists have something to page through.
  for (const body of [CLASS_A_SUBMISSION, SAMPLE_SUBMISSION]) expect((await api(stack, 'POST', '/api/v1/golden-path/run', { token: tok.full, body, headers: key() })).status).toBe(202);
  expect((await api(stack, 'POST', '/api/v1/webhook-endpoints', { token: tok.full, headers: key(), body: { url: 'http://127.0.0.1:9/a', events: ['run.completed'] } })).status).toBe(201);
}, LONG);
afterAll(async () => stack?.stop());

describe("tenant A naming tenant B's ids, on every route with a path parameter", () => {
  for (const [who, token, expected] of [
    ['with every tenant role (admin, approver)', () => tok.full, (def: RouteDef) => (def.roles?.includes('platform-operator') ? 403 : 404)],
    ['without roles', () => tok.none, (def: RouteDef) => (def.roles?.length ? 403 : 404)],
    ['without a token', () => undefined, () => 401],
  ] as const) {
    it(`${who}: answered exactly as a made-up id is, and not one of B's rows changes`, { timeout: LONG }, async () => {
      const before = await rowsOfB();
      const seen: string[] = [];
      for (const def of paramRoutes()) {
        const ids = targetOf(def);
        const made = randomIds(ids);
        const label = `${def.method.toUpperCase()} ${def.path}`;
        const real = await send(def, fill(def.path, ids), token());
        const fake = await send(def, fill(def.path, made), token());
        expect(real.status, `${label}: ${real.text}`).toBe(expected(def));
        expect(comparable(real, ids), label).toEqual(comparable(fake, made));
        for (const id of Object.values(ids)) expect(real.text, label).not.toContain(id);
        seen.push(label);
      }
      expect(await rowsOfB()).toEqual(before);
      // The sweep reached every kind of path: runs of both workflows, approvals, evidence, policy changes, webhooks, operators.
      expect(seen.length).toBeGreaterThanOrEqual(20);
    });
  }
});

describe('roles are matched exactly', () => {
  it('roles that only look like admin, approver or platform-operator open no route a token without roles cannot open', { timeout: LONG }, async () => {
    const before = await rowsOfB();
    for (const def of stack.container.routes.filter((r) => r.roles?.length)) {
      const path = def.path.includes('/:') ? fill(def.path, randomIds(targetOf(def))) : def.path;
      const res = await send(def, path, tok.lookalike);
      expect(res.status, `${def.method.toUpperCase()} ${def.path}: ${res.text}`).toBe(403);
      expect(res.json.code).toBe('forbidden');
    }
    expect(await rowsOfB()).toEqual(before);
  });
});

describe("list cursors that decode to a position among tenant B's rows", () => {
  const LISTS: Array<[string, string]> = [
    ['/api/v1/golden-path/runs', 'durable_runs'],
    ['/api/v1/partner-offboarding/runs', 'durable_runs'],
    ['/api/v1/approvals', 'approval_requests'],
    ['/api/v1/approval-policy/changes', 'approval_policy_changes'],
    ['/api/v1/webhook-endpoints', 'webhook_endpoints'],
  ];
  const cursor = (at: Date | string, id: string) => Buffer.from(`${new Date(at).toISOString()}|${id}`).toString('base64url');

  it('page through tenant A only: a cursor at B\'s newest row, or past every row, shows A\'s rows and never B\'s', { timeout: LONG }, async () => {
    for (const [path, table] of LISTS) {
      const { rows: b } = await stack.db.admin(`select id, created_at from ${table} where tenant_id = $1 order by created_at desc, id desc`, [tenantB]);
      const { rows: a } = await stack.db.admin(`select id from ${table} where tenant_id = $1`, [tenantA]);
      expect(b.length, table).toBeGreaterThan(0);
      const own = new Set(a.map((r) => r.id as string));
      const first = await api(stack, 'GET', `${path}?limit=100`, { token: tok.full });
      for (const c of [cursor(b[0].created_at, b[0].id), cursor('2999-12-31T23:59:59.999Z', 'ffffffff-ffff-ffff-ffff-ffffffffffff')]) {
        const res = await api(stack, 'GET', `${path}?limit=100&cursor=${c}`, { token: tok.full });
        expect(res.status, `${path}: ${res.text}`).toBe(200);
        const ids = (res.json.items as Array<Record<string, string>>).map((i) => i.id ?? i.run_id ?? i.approval_request_id);
        for (const id of ids) expect(own.has(id!), `${path}: ${id} is not A's`).toBe(true);
        for (const row of b) expect(res.text, path).not.toContain(row.id);
      }
      // Past every row, the page is the first page: a cursor moves within the tenant's rows, it never widens them.
      const far = await api(stack, 'GET', `${path}?limit=100&cursor=${cursor('2999-12-31T23:59:59.999Z', 'ffffffff-ffff-ffff-ffff-ffffffffffff')}`, { token: tok.full });
      expect(far.json.items, path).toEqual(first.json.items);
    }
  });
});

describe('one Idempotency-Key in two tenants', () => {
  it('under the same subject, with the same body on the same route, is two requests: each tenant gets its own endpoint and secret, neither a replay', async () => {
    const key = randomUUID();
    const body = { url: 'http://127.0.0.1:9/same', events: ['run.failed'] };
    const asA = await api(stack, 'POST', '/api/v1/webhook-endpoints', { token: await stack.token({ tenantId: tenantA, sub: 'shared-sub', roles: ['admin'] }), headers: { 'Idempotency-Key': key }, body });
    const asB = await api(stack, 'POST', '/api/v1/webhook-endpoints', { token: await stack.token({ tenantId: tenantB, sub: 'shared-sub', roles: ['admin'] }), headers: { 'Idempotency-Key': key }, body });
    expect([asA.status, asB.status]).toEqual([201, 201]);
    expect(asA.headers.get('idempotent-replayed')).toBeNull();
    expect(asB.headers.get('idempotent-replayed')).toBeNull();
    expect(asB.json.id).not.toBe(asA.json.id);
    expect(asB.json.secret).not.toBe(asA.json.secret);
    const { rows } = await stack.db.admin(`select tenant_id from webhook_endpoints where id = any($1::uuid[]) order by tenant_id`, [[asA.json.id, asB.json.id]]);
    expect(rows.map((r) => r.tenant_id)).toEqual([tenantA, tenantB].sort());
  });
});
