import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, CLASS_A_SUBMISSION, CLASS_C_SUBMISSION, newTenant, OFFBOARDING_SUBMISSION, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { rawGet } from '../helpers/raw-http.ts';
import { headerMismatches, objectsIn, publishedSchemas, withFieldAt } from '../helpers/openapi-validator.ts';
import { buildOpenApi } from '../../src/platform/http/openapi.ts';
import { defineRoute, MUTATING_METHODS } from '../../src/platform/http/route.ts';
import { WEBHOOK_QUEUE } from '../../src/platform/webhooks/delivery.ts';
import { OPERATOR_ROLE } from '../../src/platform/http/admin-auth.middleware.ts';
import { revokeTokens } from '../../src/platform/tenancy/token-revocations.ts';

/** Runs pending or running per tenant: the fifth submission of a tenant whose four runs wait for a worker answers 429. */
const IN_FLIGHT_CAP = 4;

let stack: TestStack;
beforeAll(async () => {
  stack = await startStack({ env: { MAX_RUNS_IN_FLIGHT_PER_TENANT: String(IN_FLIGHT_CAP) } });
});
afterAll(async () => stack?.stop());

const openApiPath = (p: string) => p.replace(/:([A-Za-z0-9_]+)/g, '{$1}');

describe('OpenAPI 3.1 from the route declarations', () => {
  it('documents every route of container.routes with its parameters, body and problem+json errors', async () => {
    const res = await api(stack, 'GET', '/openapi.json');
    expect(res.status).toBe(200);
    const doc = res.json;
    expect(doc.openapi).toBe('3.1.0');
    expect(stack.container.routes.length).toBeGreaterThan(0);
    for (const def of stack.container.routes) {
      const op = doc.paths[openApiPath(def.path)]?.[def.method];
      expect(op, `${def.method.toUpperCase()} ${def.path}`).toBeDefined();
      expect(op.summary).toBe(def.summary);
      expect(op.security).toEqual([{ bearerAuth: [] }]);
      for (const code of Object.keys(def.responses)) expect(op.responses[code], `${def.path} ${code}`).toBeDefined();
      for (const code of ['401', '500', '503']) {
        expect(op.responses[code].content['application/problem+json'].schema).toEqual({ $ref: '#/components/schemas/Problem' });
      }
      expect(op.responses['200'] ?? op.responses['201'] ?? op.responses['202'] ?? op.responses['204']).toBeDefined();
      // 204 No Content is published without content (DELETE …/webhook-endpoints/:id).
      if (op.responses['204']) expect(op.responses['204'].content).toBeUndefined();
      const params = (op.parameters ?? []).map((p: { in: string; name: string }) => `${p.in}:${p.name}`);
      for (const name of def.path.match(/:([A-Za-z0-9_]+)/g) ?? []) expect(params).toContain(`path:${name.slice(1)}`);
      if (['post', 'put', 'patch'].includes(def.method)) {
        expect(params).toContain('header:Idempotency-Key');
        expect(op.responses['409']).toBeDefined();
        expect(op.responses['422']).toBeDefined();
      }
      if (def.body) expect(op.requestBody.content['application/json'].schema.type).toBe('object');
    }
    // A body is published as optional only where the route really goes without one (all-default options):
    // today the rotation's alone; every other body stays required.
    const optionalBodies = Object.entries(doc.paths).flatMap(([path, ops]) =>
      Object.entries(ops as Record<string, { requestBody?: { required?: boolean } }>).filter(([, op]) => op.requestBody && !op.requestBody.required).map(([method]) => `${method} ${path}`),
    );
    expect(optionalBodies).toEqual(['post /api/v1/webhook-endpoints/{id}/rotate-secret']);
    // Every operational endpoint of docs/api.md's table, the HTML rendering of this document included.
    expect(Object.keys(doc.paths)).toEqual(expect.arrayContaining(['/healthz', '/readyz', '/metrics', '/openapi.json', '/docs']));
  });

  it('documents the headers a client acts on: Location, Idempotent-Replayed, Retry-After, WWW-Authenticate', async () => {
    const doc = (await api(stack, 'GET', '/openapi.json')).json;
    const submit = doc.paths['/api/v1/golden-path/run'].post.responses;
    expect(Object.keys(submit['202'].headers)).toEqual(expect.arrayContaining(['Location', 'Idempotent-Replayed', 'X-Correlation-Id']));
    expect(Object.keys(submit['409'].headers)).toContain('Retry-After');
    expect(Object.keys(submit['429'].headers)).toContain('Retry-After');
    expect(Object.keys(submit['503'].headers)).toContain('Retry-After');
    expect(Object.keys(submit['401'].headers)).toContain('WWW-Authenticate');
    // The refusals of any request before a route (docs/api.md, "Status codes"): 408 and 431 on every
    // operation, by reference; 405 (a method the path does not list) among the components, with Allow.
    for (const def of stack.container.routes) {
      const responses = doc.paths[openApiPath(def.path)][def.method].responses;
      expect([responses['408'], responses['431']], `${def.method.toUpperCase()} ${def.path}`).toEqual([{ $ref: '#/components/responses/RequestTimeout' }, { $ref: '#/components/responses/HeadersTooLarge' }]);
    }
    expect(doc.components.responses.RequestTimeout.description).toContain('(code: request_timeout)');
    expect(doc.components.responses.HeadersTooLarge.description).toContain('(code: headers_too_large)');
    expect(doc.components.responses.MethodNotAllowed.description).toContain('(code: method_not_allowed)');
    expect(Object.keys(doc.components.responses.MethodNotAllowed.headers)).toContain('Allow');
    const read = doc.paths['/api/v1/golden-path/runs/{id}'].get.responses;
    expect(Object.keys(read['200'].headers)).not.toContain('Idempotent-Replayed');
    // A route's own description of an error keeps its headers: the decision's 503 names the code a
    // decision on a run of a workflow version this instance lacks answers (ADR 0008), with Retry-After.
    const decision = doc.paths['/api/v1/approvals/{id}/decision'].post.responses;
    expect(decision['503'].description).toContain('workflow_version_unavailable');
    expect(decision['503'].description).toContain('service_unavailable');
    expect(decision['409'].description).toContain('idempotency_key_in_use');
    expect(Object.keys(decision['503'].headers)).toContain('Retry-After');
    expect(Object.keys(decision['409'].headers)).toContain('Retry-After');
  });

  it('publishes the webhook message as WebhookPayload (docs/api.md, Webhooks), as an OpenAPI 3.1 webhook with its signature headers, and a delivery\'s payload as it', async () => {
    const doc = (await api(stack, 'GET', '/openapi.json')).json;
    expect(Object.keys(doc.components.schemas)).toContain('WebhookPayload');
    expect(JSON.stringify(doc.components.schemas.WebhookDelivery.properties.payload)).toContain('#/components/schemas/WebhookPayload');
    const hook = Object.values(doc.webhooks ?? {}).map((w: any) => w.post)[0];
    expect(hook, 'a webhook in the document').toBeDefined();
    expect(JSON.stringify(hook.requestBody.content['application/json'].schema)).toContain('#/components/schemas/WebhookPayload');
    expect(hook.parameters.filter((p: { in: string }) => p.in === 'header').map((p: { name: string }) => p.name)).toEqual(
      expect.arrayContaining(['webhook-id', 'webhook-timestamp', 'webhook-signature']),
    );
  });

  it("publishes a run's trace_id as nullable and says when it is null (tracing off, or a trace its sampler did not sample)", async () => {
    const doc = (await api(stack, 'GET', '/openapi.json')).json;
    const found: any[] = [];
    const visit = (v: unknown): void => {
      if (!v || typeof v !== 'object') return;
      const props = (v as { properties?: Record<string, unknown> }).properties;
      if (props?.trace_id) found.push(props.trace_id);
      for (const x of Object.values(v)) visit(x);
    };
    visit(doc);
    expect(found.length).toBeGreaterThan(0);
    for (const t of found) {
      expect(JSON.stringify(t)).toContain('"null"');
      expect(t.description ?? '', JSON.stringify(t)).toMatch(/null.*sampl/s);
    }
  });

  it("names database_timeout among every route's 503s: any request's statement may wait out DATABASE_STATEMENT_TIMEOUT (to-problem.ts)", async () => {
    const doc = (await api(stack, 'GET', '/openapi.json')).json;
    const without = stack.container.routes
      .map((def) => ({ def, r: doc.paths[openApiPath(def.path)][def.method].responses['503'] as { description: string } }))
      .filter(({ r }) => !/\(code: [^)]*\bdatabase_timeout\b/.test(r.description) || !/\bservice_unavailable\b/.test(r.description))
      .map(({ def }) => `${def.method.toUpperCase()} ${def.path}`);
    expect(without).toEqual([]);
  });

  it('names the problem code of every error response it publishes, so a client knows what to branch on', async () => {
    const doc = (await api(stack, 'GET', '/openapi.json')).json;
    const unnamed: string[] = [];
    for (const def of stack.container.routes) {
      for (const [status, published] of Object.entries<{ description: string } | { $ref: string }>(doc.paths[openApiPath(def.path)][def.method].responses)) {
        // A refusal common to every operation (408, 431) is a reference to components.responses.
        const r: { description: string } = '$ref' in published ? doc.components.responses[published.$ref.replace('#/components/responses/', '')] : published;
        expect(r, `${def.method.toUpperCase()} ${def.path} ${status}`).toBeDefined();
        if (Number(status) >= 400 && !/\(code: [a-z_]+/.test(r.description)) unnamed.push(`${def.method.toUpperCase()} ${def.path} ${status}: ${r.description}`);
      }
    }
    expect(unnamed).toEqual([]);
  });

  it('publishes each request body as the route validates it: an empty object is valid in the document exactly when the route accepts it', async () => {
    // A client validating before it sends (or a generated one) must not send what is refused: the
    // PATCH of a webhook endpoint takes "at least one" field (docs/api.md), which its schema must say.
    const schemas = publishedSchemas((await api(stack, 'GET', '/openapi.json')).json);
    const differ: string[] = [];
    for (const def of stack.container.routes.filter((r) => r.body)) {
      const v = schemas.requestValidator(def.method, def.path);
      expect(v, `${def.method} ${def.path}: a published body`).toBeDefined();
      const published = v!({});
      if (published !== def.body!.safeParse({}).success) differ.push(`${def.method.toUpperCase()} ${def.path}: {} is ${published ? 'valid' : 'invalid'} in the document only`);
    }
    expect(differ).toEqual([]);
    // Codes the route checks against ISO's lists are published as their shape at least: a lower-case
    // or empty country or currency is invalid in the document too, not only at the API.
    const submission = schemas.requestValidator('post', '/api/v1/golden-path/run')!;
    const policy = schemas.requestValidator('put', '/api/v1/approval-policy')!;
    const thresholds = { class_a_max_cost: 1, class_a_max_payback_months: 1, class_c_min_cost: 2, class_c_min_payback_months: 2, sla_b_seconds: 60, sla_c_seconds: 60 };
    expect(submission(SAMPLE_SUBMISSION) && policy({ ...thresholds, currency: 'SAR' })).toBe(true);
    for (const code of ['', 'sa', 's']) expect(submission({ ...SAMPLE_SUBMISSION, partner: { ...SAMPLE_SUBMISSION.partner, country: code } }), `country ${JSON.stringify(code)}`).toBe(false);
    for (const code of ['', 'sar', 'SA']) {
      expect(submission({ ...SAMPLE_SUBMISSION, currency: code }), `currency ${JSON.stringify(code)}`).toBe(false);
      expect(policy({ ...thresholds, currency: code }), `policy currency ${JSON.stringify(code)}`).toBe(false);
    }
  });

  it('converts every route schema (no route falls back to an untyped body)', () => {
    expect(buildOpenApi(stack.container.routes).problems).toEqual([]);
  });

  it('refuses to declare a route whose success response has no body schema', () => {
    const untyped = () => defineRoute({ method: 'get', path: '/x', summary: 'x', tags: ['x'], responses: { 200: { description: 'untyped' } }, handler: async () => ({ status: 200, body: {} }) });
    expect(untyped).toThrow('GET /x: the 200 response must declare the schema of its body');
  });

  it('serves a self-contained docs page listing every route, with no external resources', async () => {
    const res = await api(stack, 'GET', '/docs');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/html');
    for (const def of stack.container.routes) expect(res.text).toContain(openApiPath(def.path));
    expect(res.text).not.toMatch(/<script|src="http|href="http/);
  });

  it('every whole JSON example of docs/api.md shows each field its published schema requires: an example that leaves fields out says so with "…"', async () => {
    const doc = (await api(stack, 'GET', '/openapi.json')).json;
    const schemas = Object.entries(doc.components.schemas as Record<string, { properties?: Record<string, unknown>; required?: string[] }>)
      .filter(([, s]) => s.properties)
      .map(([name, s]) => ({ name, props: Object.keys(s.properties!), required: s.required ?? [] }));
    const text = readFileSync(new URL('../../docs/api.md', import.meta.url), 'utf8');
    const short: string[] = [];
    let checked = 0;
    const check = (line: number, obj: Record<string, unknown>) => {
      const keys = Object.keys(obj);
      if (keys.includes('…')) return; // abridged on purpose
      // The schema it shows: the smallest that has every field it has…
      const schema = schemas.filter((s) => keys.every((k) => s.props.includes(k))).sort((a, b) => a.props.length - b.props.length)[0];
      // …when it has most of that schema's fields (fewer: a request body, or a fragment of another object).
      if (!schema || schema.required.filter((k) => keys.includes(k)).length * 2 <= schema.required.length) return;
      checked++;
      const missing = schema.required.filter((k) => !keys.includes(k));
      if (missing.length) short.push(`docs/api.md:${line}: a ${schema.name} without ${missing.join(', ')}`);
    };
    const visit = (line: number, v: unknown): void => {
      if (Array.isArray(v)) return v.forEach((x) => visit(line, x));
      if (!v || typeof v !== 'object') return;
      check(line, v as Record<string, unknown>);
      for (const x of Object.values(v)) visit(line, x);
    };
    for (const m of text.matchAll(/```json\n([\s\S]*?)```/g)) {
      let example: unknown;
      try {
        example = JSON.parse(m[1]!);
      } catch {
        continue; // abridged with a bare … : not a whole example
      }
      visit(text.slice(0, m.index).split('\n').length + 1, example);
    }
    expect(checked).toBeGreaterThan(10);
    expect(short, 'write the example whole (the API sends every one of these fields), or mark what it leaves out with "…"').toEqual([]);
  });
});

describe('every refusal the router really answers is published for its route', () => {
  it('unknown query parameters, malformed JSON, bodies too large or not JSON, unsupported encodings, malformed keys and unknown fields: each status with its code', async () => {
    const doc = (await api(stack, 'GET', '/openapi.json')).json;
    const tenant = newTenant();
    const token = await stack.token({ tenantId: tenant, sub: 'refused-1', roles: ['approver', 'admin'] });
    const POLICY = { class_a_max_cost: 1, class_a_max_payback_months: 1, class_c_min_cost: 2, class_c_min_payback_months: 2, sla_b_seconds: 60, sla_c_seconds: 60 };
    const validBody = (path: string) => (path.endsWith('/golden-path/run') ? SAMPLE_SUBMISSION : path.endsWith('/decision') ? { decision: 'approve' } : path.endsWith('/approval-policy') ? POLICY : undefined);
    const json = (body: unknown) => ({ rawBody: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
    const seen: string[] = [];
    for (const def of stack.container.routes) {
      const method = def.method.toUpperCase();
      const path = def.path.replace(':id', randomUUID());
      const body = MUTATING_METHODS.has(def.method) ? validBody(def.path) : undefined;
      const cases: Array<[string, { query?: string; rawBody?: string; headers?: Record<string, string> }]> = [['an unknown query parameter', { query: '?unexpected=1', ...(body ? json(body) : {}) }]];
      if (MUTATING_METHODS.has(def.method)) {
        cases.push(
          ['malformed JSON', { rawBody: '{"a":', headers: { 'content-type': 'application/json' } }],
          ['a bare JSON value', { rawBody: 'null', headers: { 'content-type': 'application/json' } }],
          ['a body over BODY_LIMIT', json({ pad: 'x'.repeat(70_000) })],
          ['a body that is not JSON', { rawBody: 'x=1', headers: { 'content-type': 'text/plain' } }],
          ['an unsupported content encoding', { rawBody: '{}', headers: { 'content-type': 'application/json', 'content-encoding': 'x-evil' } }],
          ['a body that does not decode under its content encoding', { rawBody: '{}', headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' } }],
          ['an unknown field', json({ ...(body as object | undefined), unexpected: 1 })],
          ['an empty Idempotency-Key', { ...(body ? json(body) : {}), headers: { ...(body ? json(body).headers : {}), 'Idempotency-Key': '' } }],
        );
      }
      for (const [what, c] of cases) {
        const headers = { 'Idempotency-Key': randomUUID(), ...c.headers };
        const res = await api(stack, method, path + (c.query ?? ''), { token, headers, ...(c.rawBody !== undefined ? { rawBody: c.rawBody } : {}) });
        const label = `${method} ${def.path}, ${what}: ${res.status} ${res.json?.code}`;
        expect(res.status, label).toBeGreaterThanOrEqual(400);
        expect(res.status, label).toBeLessThan(500);
        const published = doc.paths[openApiPath(def.path)][def.method].responses[String(res.status)];
        expect(published, `${label}: status not published`).toBeDefined();
        expect(published.description, `${label}: code not published`).toContain(res.json.code);
        expect(published.content['application/problem+json'].schema).toEqual({ $ref: '#/components/schemas/Problem' });
        seen.push(label);
      }
    }
    // The cases reached the refusals they probe (none of them a handler's answer).
    expect(seen.filter((l) => / (413 payload_too_large|415 unsupported_media_type|415 unsupported_encoding|400 malformed_json|400 bad_request)$/.test(l)).length).toBeGreaterThanOrEqual(5 * 5);
  });
});

describe('every 401 the API really answers is published for its route: its code and its WWW-Authenticate', () => {
  it('a token that does not verify (unauthorized, Bearer) and a revoked one (token_revoked, Bearer error="invalid_token"), on every route', async () => {
    const schemas = publishedSchemas((await api(stack, 'GET', '/openapi.json')).json);
    const tenant = newTenant();
    const revoked = await stack.token({ tenantId: tenant, sub: 'revoked-1', roles: ['approver', 'admin'] });
    expect((await api(stack, 'GET', '/api/v1/golden-path/runs', { token: revoked })).status).toBe(200);
    // As `npm run token -- revoke --jti` does it (src/cli/token.ts): stored as the owner role, announced over Redis.
    const jti = (JSON.parse(Buffer.from(revoked.split('.')[1]!, 'base64url').toString()) as { jti: string }).jti;
    const done = await revokeTokens({ ownerUrl: stack.db.ownerUrl, redis: stack.redis, prefix: stack.prefix }, { tenantId: tenant, jti, revokedBy: 'openapi-test' });
    expect(done.announced).toBe(true);
    await waitFor(async () => ((await api(stack, 'GET', '/api/v1/golden-path/runs', { token: revoked })).status === 401 ? true : undefined), { timeoutMs: 30_000, what: 'the revoked token refused' });
    const mismatches: string[] = [];
    const seen = new Set<string>();
    for (const def of stack.container.routes) {
      const method = def.method.toUpperCase();
      const path = def.path.replace(/:[A-Za-z0-9_]+/g, () => randomUUID());
      for (const [what, token] of [['a badly signed token', `${revoked.slice(0, -4)}AAAA`], ['a revoked token', revoked]] as const) {
        const res = await api(stack, method, path, { token, headers: { 'Idempotency-Key': randomUUID() } });
        const label = `${method} ${def.path}, ${what}`;
        expect(res.status, `${label}: ${res.text}`).toBe(401);
        seen.add(res.json.code);
        const codes = schemas.problemCodes(method, def.path, 401);
        if (!codes.includes(res.json.code)) mismatches.push(`${label}: code ${res.json.code} is not among the published ${codes.join(', ')}`);
        const header = res.headers.get('www-authenticate');
        const v = schemas.headerValidator(method, def.path, 401, 'WWW-Authenticate');
        if (!v) mismatches.push(`${label}: no WWW-Authenticate published`);
        else if (!v(header)) mismatches.push(`${label}: WWW-Authenticate ${JSON.stringify(header)} does not match its published schema`);
      }
    }
    expect([...seen].sort()).toEqual(['token_revoked', 'unauthorized']);
    expect(mismatches).toEqual([]);
  });
});

describe('429 rate_limited is documented on every route, and the submission limits exactly where the router admits by them', () => {
  it("lists 429 everywhere (the tenant's in-flight share), naming the submission limits if and only if the route declares admission", async () => {
    const doc = (await api(stack, 'GET', '/openapi.json')).json;
    const limited: string[] = [];
    for (const def of stack.container.routes) {
      const label = `${def.method.toUpperCase()} ${def.path}`;
      const responses = doc.paths[openApiPath(def.path)][def.method].responses;
      expect('429' in responses, label).toBe(true);
      expect(responses['429'].content['application/problem+json'].schema).toEqual({ $ref: '#/components/schemas/Problem' });
      expect(Object.keys(responses['429'].headers)).toContain('Retry-After');
      expect(responses['429'].description, label).toContain('requests in progress');
      if (/submissions per minute/.test(responses['429'].description)) limited.push(label);
      expect(/submissions per minute/.test(responses['429'].description), label).toBe(def.admission !== undefined);
    }
    // A new workflow's submission and retry belong here (docs/runtime.md, *Adding a workflow*, step 7).
    expect(limited, 'the routes that declare admission (each workflow\'s submission and retry)').toEqual(['POST /api/v1/golden-path/run', 'POST /api/v1/golden-path/runs/:id/retry', 'POST /api/v1/partner-offboarding/run', 'POST /api/v1/partner-offboarding/runs/:id/retry']);
    // Not "every mutating route": these mutate, and no submission limit stands in their way.
    const unlimitedMutating = stack.container.routes.filter((d) => MUTATING_METHODS.has(d.method) && !d.admission).map((d) => `${d.method.toUpperCase()} ${d.path}`);
    expect(unlimitedMutating).toEqual(expect.arrayContaining(['POST /api/v1/approvals/:id/decision', 'PUT /api/v1/approval-policy']));
  });
});

/**
 * Real responses of the real API (PostgreSQL as the application role, Redis, a worker process) are
 * validated against the schema the OpenAPI document publishes for their route and status, as a
 * client would (JSON Schema 2020-12). Each success body is also checked to be closed: the same body
 * with an unknown field at any level must fail, so a published schema that accepts anything fails here.
 */
describe('the published schemas hold for real responses of every route', () => {
  const tenant = newTenant();
  const tok: Record<string, string> = {};
  const runs: Record<'a' | 'b' | 'c' | 'failed', string> = { a: '', b: '', c: '', failed: '' };
  let schemas: ReturnType<typeof publishedSchemas>;
  let publishedDoc: any;
  /** `METHOD template status` of every response checked. */
  const checked = new Set<string>();

  beforeAll(async () => {
    publishedDoc = (await api(stack, 'GET', '/openapi.json')).json;
    schemas = publishedSchemas(publishedDoc);
    const t = (sub: string, roles: string[] = []) => stack.token({ tenantId: tenant, sub, roles });
    tok.submitter = await t('submitter-1');
    tok.approver1 = await t('approver-1', ['approver']);
    tok.approver2 = await t('approver-2', ['approver']);
    tok.admin = await t('admin-1', ['admin']);
  });

  type Res = Awaited<ReturnType<typeof api>>;
  /** The response matches what the document publishes for `method template` and its status. */
  function expectPublished(method: string, template: string, res: Res, expectedStatus: number): Res {
    expect(res.status, res.text).toBe(expectedStatus);
    const label = `${method} ${template} ${res.status}`;
    // The headers a client acts on are published for this status, and those published as required are sent.
    expect(headerMismatches(schemas.headers(method, template, res.status), method, res), `${label}: headers`).toEqual([]);
    // 204 No Content and 304 Not Modified: published without content, and sent without a body or a content type.
    if (res.status === 204 || res.status === 304) {
      expect(res.text, label).toBe('');
      expect(res.headers.get('content-type'), label).toBeNull();
      checked.add(label);
      return res;
    }
    const contentType = (res.headers.get('content-type') ?? '').split(';')[0]!.trim();
    if (contentType === 'application/problem+json') {
      // Extension members (RFC 9457) a client branches on — run_status, run_id, … — are published, each one.
      const members = Object.keys(publishedDoc.components.schemas.Problem.properties);
      expect(Object.keys(res.json).filter((k) => !members.includes(k)), `${label}: problem members not published`).toEqual([]);
    }
    const v = schemas.validator(method, template, res.status, contentType);
    expect(v, `${label}: no published schema for ${contentType}`).toBeDefined();
    expect(schemas.errors(v!, res.json), label).toEqual([]);
    if (res.status < 300) {
      const objects = objectsIn(res.json);
      expect(objects.length).toBeGreaterThan(0);
      for (const { path } of objects) {
        const where = `${label} at /${path.join('/')}`;
        expect(schemas.errors(v!, withFieldAt(res.json, path, { unexpected_field: 1 })), `${where}: an unknown field must not validate`).not.toEqual([]);
      }
    }
    checked.add(label);
    return res;
  }
  const get = (template: string, path: string, token = tok.submitter!) => api(stack, 'GET', path, { token }).then((r) => expectPublished('GET', template, r, 200));
  const getRun = (id: string) => get('/api/v1/golden-path/runs/:id', `/api/v1/golden-path/runs/${id}`);
  const submit = (body: unknown) => api(stack, 'POST', '/api/v1/golden-path/run', { token: tok.submitter!, body, headers: { 'Idempotency-Key': randomUUID() } });
  /** Polls the run until it reaches one of `statuses`; the response that did is checked against the document. */
  async function waitRun(id: string, statuses: string[]) {
    const res = await waitFor(
      async () => {
        const r = await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token: tok.submitter! });
        return statuses.includes(r.json?.status) ? r : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 100, what: `run ${id} to reach ${statuses.join('|')}` },
    );
    return expectPublished('GET', '/api/v1/golden-path/runs/:id', res, 200).json;
  }
  async function decide(approvalId: string, decision: 'approve' | 'reject', token: string) {
    const res = await api(stack, 'POST', `/api/v1/approvals/${approvalId}/decision`, { token, body: { decision, comment: 'checked' }, headers: { 'Idempotency-Key': randomUUID() } });
    return expectPublished('POST', '/api/v1/approvals/:id/decision', res, 200).json;
  }

  it('submissions answer 202 as published, pending runs read as published, and over the runs-in-flight cap the submission answers 429 as published', async () => {
    const accepted = [CLASS_A_SUBMISSION, SAMPLE_SUBMISSION, CLASS_C_SUBMISSION, CLASS_A_SUBMISSION];
    expect(accepted).toHaveLength(IN_FLIGHT_CAP);
    const ids: string[] = [];
    // No worker yet: the runs stay pending, so the cap is reached whatever the timing.
    for (const body of accepted) ids.push(expectPublished('POST', '/api/v1/golden-path/run', await submit(body), 202).json.run_id);
    [runs.a, runs.b, runs.c, runs.failed] = ids as [string, string, string, string];
    const over = expectPublished('POST', '/api/v1/golden-path/run', await submit(CLASS_A_SUBMISSION), 429);
    expect(over.json.code).toBe('rate_limited');
    expect(Number(over.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    // Routes without admission are not limited: a read and a policy change still succeed for this tenant.
    const pending = (await getRun(runs.a)).json;
    expect(pending).toMatchObject({ status: 'pending', output: null, error: null, completed_at: null });
    const policy = (await get('/api/v1/approval-policy', '/api/v1/approval-policy')).json;
    expect(policy.source).toBe('default');
    // The same thresholds, now the tenant's own: the runs classify as under the defaults.
    const put = await api(stack, 'PUT', '/api/v1/approval-policy', { token: tok.admin!, body: policy.policy });
    expect(expectPublished('PUT', '/api/v1/approval-policy', put, 200).json).toMatchObject({ source: 'tenant', policy: policy.policy, updated_by: 'admin-1' });
    // The tenant's policy reads as published too, with its currency and the admin who set it.
    expect((await get('/api/v1/approval-policy', '/api/v1/approval-policy')).json).toEqual(put.json);
    const published = (await api(stack, 'GET', '/openapi.json')).json.components.schemas.ApprovalPolicyView;
    expect(published.required).toEqual(expect.arrayContaining(['policy', 'updated_at', 'updated_by']));
    expect(published.properties.policy.required).toContain('currency');
  });

  /** Offboardings of a tenant of their own (the runs-in-flight cap above counts every workflow's runs): one cancelled, one to fail. */
  const offboarding = { token: '', cancelled: '', failed: '' };

  it('an offboarding cancelled while pending answers 200 as published, and a second cancel 409 as published', async () => {
    offboarding.token = await stack.token({ tenantId: newTenant(), sub: 'ops-1' });
    const submitOffboarding = async (reference: string) =>
      expectPublished('POST', '/api/v1/partner-offboarding/run', await api(stack, 'POST', '/api/v1/partner-offboarding/run', { token: offboarding.token, body: { ...OFFBOARDING_SUBMISSION, partner: { reference, name: 'Acme' } }, headers: { 'Idempotency-Key': randomUUID() } }), 202).json
        .run_id as string;
    // No worker yet: both stay pending until the next test starts one. Two partners: a second offboarding of one is refused while the first is pending.
    offboarding.cancelled = await submitOffboarding('P-CANCELLED');
    offboarding.failed = await submitOffboarding('P-FAILED');
    // Refused by the claim of a run that has not frozen the partner yet: the 409 names it with
    // offboarding_status null (docs/api.md), as the published Problem must allow.
    const held = await api(stack, 'POST', '/api/v1/partner-offboarding/run', { token: offboarding.token, body: { ...OFFBOARDING_SUBMISSION, partner: { reference: 'P-FAILED', name: 'Acme' } }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(expectPublished('POST', '/api/v1/partner-offboarding/run', held, 409).json).toMatchObject({ code: 'partner_already_offboarded', run_id: offboarding.failed, run_status: 'pending', offboarding_status: null });
    // As the golden path's failed run: its stored input no longer parses, so its first step fails for good.
    await stack.db.admin(`update durable_runs set input = '{"partner":"tampered"}'::jsonb where id = $1`, [offboarding.failed]);
    const cancel = () => api(stack, 'POST', `/api/v1/partner-offboarding/runs/${offboarding.cancelled}/cancel`, { token: offboarding.token, headers: { 'Idempotency-Key': randomUUID() } });
    expect(expectPublished('POST', '/api/v1/partner-offboarding/runs/:id/cancel', await cancel(), 200).json).toMatchObject({ status: 'cancelled', error: { code: 'cancelled', cancelled_by: 'ops-1' } });
    expect(expectPublished('POST', '/api/v1/partner-offboarding/runs/:id/cancel', await cancel(), 409).json).toMatchObject({ code: 'run_not_active', run_status: 'cancelled' });
  });

  it('runs read as published in every state: completed, waiting, failed', async () => {
    // A real step failure: the stored input no longer parses, so the worker's first step fails for
    // good and the executor records the error on the step and the run.
    await stack.db.admin(`update durable_runs set input = '{"partner":"tampered"}'::jsonb where id = $1`, [runs.failed]);
    await stack.spawnWorker();
    const a = await waitRun(runs.a, ['completed', 'failed']);
    expect(a.status).toBe('completed');
    expect(a.output).not.toBeNull();
    expect(a.links).toHaveProperty('verify');
    const b = await waitRun(runs.b, ['waiting', 'failed']);
    expect(b.status).toBe('waiting');
    expect(b.steps[2].output.outcome).toBe('pending');
    expect((await waitRun(runs.c, ['waiting', 'failed'])).status).toBe('waiting');
    const failed = await waitRun(runs.failed, ['failed', 'completed']);
    expect(failed.status).toBe('failed');
    expect(failed.error).toMatchObject({ step: 'partner-dossier', sequence_num: 1 });
    expect(failed.steps[0]).toMatchObject({ status: 'failed', error: { code: expect.any(String) } });
  });

  it('pages of runs and of approval requests read as published, with and without a next cursor', async () => {
    const first = (await get('/api/v1/golden-path/runs', '/api/v1/golden-path/runs?limit=2')).json;
    expect(first.items).toHaveLength(2);
    expect(first.next_cursor).toEqual(expect.any(String));
    const rest = (await get('/api/v1/golden-path/runs', `/api/v1/golden-path/runs?limit=100&cursor=${first.next_cursor}`)).json;
    expect(rest.items).toHaveLength(2);
    expect(rest.next_cursor).toBeNull();
    expect((await get('/api/v1/golden-path/runs', '/api/v1/golden-path/runs?status=failed')).json.items.map((r: { run_id: string }) => r.run_id)).toEqual([runs.failed]);
    // Approval requests of the runs A (approved by the system), B and C (pending).
    const page = (await get('/api/v1/approvals', '/api/v1/approvals?limit=1')).json;
    expect(page.next_cursor).toEqual(expect.any(String));
    const all = (await get('/api/v1/approvals', `/api/v1/approvals?cursor=${page.next_cursor}`)).json;
    expect([...page.items, ...all.items]).toHaveLength(3);
    expect(all.next_cursor).toBeNull();
  });

  it('approval requests and decisions read as published, before and after human decisions', async () => {
    const approvalOf = async (runId: string) => (await getRun(runId)).json.steps[2].output.approval_request_id as string;
    const byRun = { a: await approvalOf(runs.a), b: await approvalOf(runs.b), c: await approvalOf(runs.c) };
    const one = (id: string) => get('/api/v1/approvals/:id', `/api/v1/approvals/${id}`).then((r) => r.json);
    expect(await one(byRun.a)).toMatchObject({ status: 'approved', decisions: [{ kind: 'system' }] });
    expect(await one(byRun.b)).toMatchObject({ status: 'pending', decisions: [], decided_at: null });
    expect(await decide(byRun.b, 'approve', tok.approver1!)).toMatchObject({ status: 'approved' });
    expect(await decide(byRun.c, 'approve', tok.approver1!)).toMatchObject({ status: 'pending', approvals: 1, required_approvals: 2 });
    expect(await decide(byRun.c, 'reject', tok.approver2!)).toMatchObject({ status: 'rejected' });
    expect(await one(byRun.c)).toMatchObject({ status: 'rejected', decisions: [{ kind: 'human' }, { kind: 'human' }] });
    expect((await waitRun(runs.b, ['completed', 'failed'])).status).toBe('completed');
    expect((await waitRun(runs.c, ['rejected', 'failed'])).status).toBe('rejected');
  });

  it('evidence packs and their verification read as published', async () => {
    for (const id of [runs.a, runs.b, runs.c]) {
      const run = (await getRun(id)).json;
      const pack = (await get('/api/v1/evidence/:id', run.links.evidence)).json;
      expect(pack.run_id).toBe(id);
      expect((await get('/api/v1/evidence/:id/verify', run.links.verify)).json).toMatchObject({ valid: true, sha256: pack.sha256 });
    }
  });

  it('a cancel answers 200 as published, its run reads as published, and a second cancel and a decision on its approval answer 409 as published', async () => {
    // The runs above have all ended, so this one is under the runs-in-flight cap; class B waits for a human.
    const id = expectPublished('POST', '/api/v1/golden-path/run', await submit(SAMPLE_SUBMISSION), 202).json.run_id as string;
    const waiting = await waitRun(id, ['waiting', 'failed']);
    expect(waiting.status).toBe('waiting');
    const cancel = () => api(stack, 'POST', `/api/v1/golden-path/runs/${id}/cancel`, { token: tok.submitter!, headers: { 'Idempotency-Key': randomUUID() } });
    const cancelled = expectPublished('POST', '/api/v1/golden-path/runs/:id/cancel', await cancel(), 200).json;
    expect(cancelled).toMatchObject({ status: 'cancelled', error: { code: 'cancelled', cancelled_by: 'submitter-1' } });
    expect((await getRun(id)).json.status).toBe('cancelled');
    expect(expectPublished('POST', '/api/v1/golden-path/runs/:id/cancel', await cancel(), 409).json).toMatchObject({ code: 'run_not_active', run_status: 'cancelled' });
    const decision = await api(stack, 'POST', `/api/v1/approvals/${waiting.steps[2].output.approval_request_id}/decision`, {
      token: tok.approver1!,
      body: { decision: 'approve' },
      headers: { 'Idempotency-Key': randomUUID() },
    });
    expect(expectPublished('POST', '/api/v1/approvals/:id/decision', decision, 409).json.code).toBe('run_not_active');
    // Its approval request reads withdrawn, alone and in the list filtered by it.
    const approvalId = waiting.steps[2].output.approval_request_id as string;
    expect((await get('/api/v1/approvals/:id', `/api/v1/approvals/${approvalId}`)).json).toMatchObject({ status: 'withdrawn', decided_at: cancelled.completed_at });
    expect((await get('/api/v1/approvals', '/api/v1/approvals?status=withdrawn')).json.items.map((a: { id: string; status: string }) => [a.id, a.status])).toEqual([[approvalId, 'withdrawn']]);
  });

  it('a pending request past its deadline reads expired as published, alone and in the list, before any worker records it', async () => {
    const id = expectPublished('POST', '/api/v1/golden-path/run', await submit(SAMPLE_SUBMISSION), 202).json.run_id as string;
    const waiting = await waitRun(id, ['waiting', 'failed']);
    expect(waiting.status).toBe('waiting');
    const approvalId = waiting.steps[2].output.approval_request_id as string;
    // The default class B SLA is 24 h: its timer is far off; the deadline is moved into the past by hand.
    const [moved] = (await stack.db.admin(`update approval_requests set sla_deadline = now() - interval '1 second' where id = $1 returning sla_deadline`, [approvalId])).rows;
    const deadline = (moved.sla_deadline as Date).toISOString();
    expect((await get('/api/v1/approvals/:id', `/api/v1/approvals/${approvalId}`)).json).toMatchObject({ status: 'expired', sla_deadline: deadline, decided_at: deadline });
    expect((await get('/api/v1/approvals', '/api/v1/approvals?status=expired')).json.items.map((a: { id: string; status: string }) => [a.id, a.status])).toEqual([[approvalId, 'expired']]);
    expect((await stack.db.admin(`select status from approval_requests where id = $1`, [approvalId])).rows[0].status).toBe('pending');
  });

  it('a retry answers 200 as published, the retried run reads as published with its retries, and a retry of a run that has not failed answers 409 as published', async () => {
    const retry = (id: string) => api(stack, 'POST', `/api/v1/golden-path/runs/${id}/retry`, { token: tok.submitter!, headers: { 'Idempotency-Key': randomUUID() } });
    // The failed run's stored input still does not parse: retried, it runs its first step again and fails the same way.
    const retried = expectPublished('POST', '/api/v1/golden-path/runs/:id/retry', await retry(runs.failed), 200).json;
    expect(retried).toMatchObject({ status: 'pending', error: null, retries: [{ retry: 1, retried_by: 'submitter-1', error: { step: 'partner-dossier', sequence_num: 1 } }] });
    const again = await waitRun(runs.failed, ['failed', 'completed']);
    expect(again).toMatchObject({ status: 'failed', error: { step: 'partner-dossier' }, retries: retried.retries });
    expect(expectPublished('POST', '/api/v1/golden-path/runs/:id/retry', await retry(runs.a), 409).json).toMatchObject({ code: 'run_not_failed', run_status: 'completed' });
  });

  it('a partner offboarding answers 202 as published, its run reads as published, pending and completed, and a second one of the partner answers 409 as published', async () => {
    // A tenant of its own: the runs-in-flight cap above counts every workflow's runs.
    const token = await stack.token({ tenantId: newTenant(), sub: 'ops-1' });
    const body = { partner: { reference: 'P-1', name: 'Acme' }, reason: 'inactive', balances: [{ currency: 'SAR', amount: 10 }] };
    const res = await api(stack, 'POST', '/api/v1/partner-offboarding/run', { token, body, headers: { 'Idempotency-Key': randomUUID() } });
    const id = expectPublished('POST', '/api/v1/partner-offboarding/run', res, 202).json.run_id as string;
    const done = await waitFor(
      async () => {
        const r = await api(stack, 'GET', `/api/v1/partner-offboarding/runs/${id}`, { token });
        return r.json?.status === 'completed' || r.json?.status === 'failed' ? r : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 100, what: `offboarding ${id} to end` },
    );
    expect(expectPublished('GET', '/api/v1/partner-offboarding/runs/:id', done, 200).json).toMatchObject({ status: 'completed', error: null });
    // The partner is offboarded: a second submission of it is refused, and the route's 409 names the code.
    const again = await api(stack, 'POST', '/api/v1/partner-offboarding/run', { token, body, headers: { 'Idempotency-Key': randomUUID() } });
    expect(expectPublished('POST', '/api/v1/partner-offboarding/run', again, 409).json).toMatchObject({ code: 'partner_already_offboarded', run_id: id, run_status: 'completed' });
    const published = (await api(stack, 'GET', '/openapi.json')).json.paths['/api/v1/partner-offboarding/run'].post.responses['409'];
    expect(published.description).toContain('partner_already_offboarded');
    expect(published.description).toContain('idempotency_key_in_use');
    expect(Object.keys(published.headers)).toContain('Retry-After');
  });

  it('a failed offboarding retried answers 200 as published, and pages of offboardings read as published', async () => {
    const { token } = offboarding;
    const failed = await waitFor(
      async () => {
        const r = await api(stack, 'GET', `/api/v1/partner-offboarding/runs/${offboarding.failed}`, { token });
        return r.json?.status === 'failed' ? r : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 100, what: `offboarding ${offboarding.failed} to fail` },
    );
    expect(expectPublished('GET', '/api/v1/partner-offboarding/runs/:id', failed, 200).json.error).toMatchObject({ step: 'freeze-partner', sequence_num: 1 });
    const retry = await api(stack, 'POST', `/api/v1/partner-offboarding/runs/${offboarding.failed}/retry`, { token, headers: { 'Idempotency-Key': randomUUID() } });
    expect(expectPublished('POST', '/api/v1/partner-offboarding/runs/:id/retry', retry, 200).json).toMatchObject({ status: 'pending', retries: [{ retry: 1, retried_by: 'ops-1' }] });
    const first = (await get('/api/v1/partner-offboarding/runs', '/api/v1/partner-offboarding/runs?limit=1', token)).json;
    expect(first.items.map((r: { run_id: string }) => r.run_id)).toEqual([offboarding.failed]);
    const rest = (await get('/api/v1/partner-offboarding/runs', `/api/v1/partner-offboarding/runs?cursor=${first.next_cursor}`, token)).json;
    expect(rest).toMatchObject({ items: [{ run_id: offboarding.cancelled, status: 'cancelled' }], next_cursor: null });
  });

  it('policy changes read as published: a loosening PUT answers 202, the change lists and reads, is rejected, and another is approved', async () => {
    // A tenant of its own: the changes applied here must not reclassify the runs above.
    const own = newTenant();
    const [admin1, admin2] = await Promise.all(['admin-1', 'admin-2'].map((sub) => stack.token({ tenantId: own, sub, roles: ['admin'] })));
    const policy = (await api(stack, 'GET', '/api/v1/approval-policy', { token: admin1! })).json.policy;
    const propose = async () =>
      expectPublished('PUT', '/api/v1/approval-policy', await api(stack, 'PUT', '/api/v1/approval-policy', { token: admin1!, body: { ...policy, class_a_max_cost: 100_000 } }), 202).json;
    const rejected = await propose();
    expect(rejected).toMatchObject({ status: 'pending', loosens: ['class_a_max_cost'] });
    expect((await get('/api/v1/approval-policy/changes', '/api/v1/approval-policy/changes', admin1!)).json.items).toEqual([rejected]);
    await get('/api/v1/approval-policy/changes/:id', `/api/v1/approval-policy/changes/${rejected.id}`, admin1!);
    const reject = await api(stack, 'POST', `/api/v1/approval-policy/changes/${rejected.id}/reject`, { token: admin2! });
    expect(expectPublished('POST', '/api/v1/approval-policy/changes/:id/reject', reject, 200).json).toMatchObject({ status: 'rejected', decided_by: 'admin-2' });
    expectPublished('POST', '/api/v1/approval-policy/changes/:id/approve', await api(stack, 'POST', `/api/v1/approval-policy/changes/${rejected.id}/approve`, { token: admin2! }), 409);

    const approved = await propose();
    expectPublished('POST', '/api/v1/approval-policy/changes/:id/approve', await api(stack, 'POST', `/api/v1/approval-policy/changes/${approved.id}/approve`, { token: admin1! }), 403);
    const approve = await api(stack, 'POST', `/api/v1/approval-policy/changes/${approved.id}/approve`, { token: admin2! });
    expect(expectPublished('POST', '/api/v1/approval-policy/changes/:id/approve', approve, 200).json).toMatchObject({ version: 1, updated_by: 'admin-1', approved_by: 'admin-2' });
    const page = await get('/api/v1/approval-policy/changes', '/api/v1/approval-policy/changes?limit=1', admin1!);
    expect(page.json.items.map((c: { id: string }) => c.id)).toEqual([approved.id]);
    expect(page.json.next_cursor).not.toBeNull();
  });

  it('a bulk cancel answers 200 as published on every workflow', async () => {
    // A tenant of its own, with one run of each workflow: whatever each run's status by then, the answer's shape is published.
    const own = newTenant();
    const [user, admin] = await Promise.all([stack.token({ tenantId: own, sub: 'ops-1' }), stack.token({ tenantId: own, sub: 'admin-1', roles: ['admin'] })]);
    for (const [workflow, body] of [['golden-path', SAMPLE_SUBMISSION], ['partner-offboarding', OFFBOARDING_SUBMISSION]] as const) {
      const run = await api(stack, 'POST', `/api/v1/${workflow}/run`, { token: user, body, headers: { 'Idempotency-Key': randomUUID() } });
      expect(run.status, run.text).toBe(202);
      const res = await api(stack, 'POST', `/api/v1/${workflow}/runs/cancel`, {
        token: admin,
        body: { status: ['pending', 'running', 'waiting'], ids: [run.json.run_id, randomUUID()] },
        headers: { 'Idempotency-Key': randomUUID() },
      });
      expect(expectPublished('POST', `/api/v1/${workflow}/runs/cancel`, res, 200).json.unmatched_ids).toHaveLength(res.json.cancelled === 1 ? 1 : 2);
    }
  });

  it('webhook endpoints read as published: create (with its secret), pages, one, disable, enable, update, delete, its deliveries, their resend and a test event', async () => {
    const own = newTenant();
    const admin = await stack.token({ tenantId: own, sub: 'admin-1', roles: ['admin'] });
    const create = async (i: number) =>
      expectPublished(
        'POST',
        '/api/v1/webhook-endpoints',
        // A public address literal: no DNS, and no delivery is ever attempted (no run of this tenant ends).
        await api(stack, 'POST', '/api/v1/webhook-endpoints', { token: admin, body: { url: `https://93.184.215.${i}/hook`, events: ['run.completed', 'approval.requested'], description: 'd' }, headers: { 'Idempotency-Key': randomUUID() } }),
        201,
      ).json;
    const first = await create(14);
    expect(first.secret).toMatch(/^whsec_/);
    await create(15);
    const page = (await get('/api/v1/webhook-endpoints', '/api/v1/webhook-endpoints?limit=1', admin)).json;
    expect(page.next_cursor).not.toBeNull();
    expect((await get('/api/v1/webhook-endpoints', `/api/v1/webhook-endpoints?cursor=${page.next_cursor}`, admin)).json.next_cursor).toBeNull();
    await get('/api/v1/webhook-endpoints/:id', `/api/v1/webhook-endpoints/${first.id}`, admin);
    // Deliveries as the outbox writes them (one of each event's shape), inserted directly: no job, so none is attempted.
    const payloads = [
      { type: 'run.completed', timestamp: '2026-12-03T10:00:00.000Z', data: { workflow: 'golden-path', run_id: randomUUID(), status: 'completed', correlation_id: 'c-1', ended_at: '2026-12-03T10:00:00.000Z', evidence_pack_id: randomUUID() } },
      { type: 'approval.requested', timestamp: '2026-12-03T10:00:00.000Z', data: { approval_request_id: randomUUID(), run_id: randomUUID(), workflow: 'golden-path', correlation_id: 'c-2', approval_class: 'B', required_approvals: 1, sla_deadline: '2026-12-04T10:00:00.000Z' } },
      {
        type: 'approval.decided',
        timestamp: '2026-12-03T11:00:00.000Z',
        data: { approval_request_id: randomUUID(), run_id: randomUUID(), workflow: 'golden-path', correlation_id: 'c-2', decision: 'approve', approver: 'approver-1', status: 'pending', approvals: 1, required_approvals: 2, decided_at: '2026-12-03T11:00:00.000Z' },
      },
      { type: 'webhook_endpoint.disabled', timestamp: '2026-12-03T10:00:00.000Z', data: { endpoint_id: randomUUID(), url: 'https://93.184.215.16', reason: 'failing', failing_since: '2026-11-28T10:00:00.000Z', disabled_at: '2026-12-03T10:00:00.000Z' } },
    ];
    for (const p of payloads) {
      await stack.db.admin(
        `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, next_attempt_at, created_at, updated_at) values ($1, $2, $3, $4, $5, 'pending', 0, now(), date_trunc('milliseconds', now()), now())`,
        [randomUUID(), own, first.id, p.type, JSON.stringify(p)],
      );
    }
    const deliveries = (await get('/api/v1/webhook-endpoints/:id/deliveries', `/api/v1/webhook-endpoints/${first.id}/deliveries`, admin)).json;
    expect(deliveries.items.map((d: { event_type: string }) => d.event_type).sort()).toEqual(['approval.decided', 'approval.requested', 'run.completed', 'webhook_endpoint.disabled']);
    const filtered = (await get('/api/v1/webhook-endpoints/:id/deliveries', `/api/v1/webhook-endpoints/${first.id}/deliveries?status=pending,failed&event_type=run.completed&created_after=2020-01-01T00:00:00Z&limit=1`, admin)).json;
    expect(filtered.items.map((d: { event_type: string }) => d.event_type)).toEqual(['run.completed']);
    await stack.db.admin(
      `update webhook_deliveries set attempts = 1, last_status_code = 500, last_error = 'HTTP 500', attempt_log = jsonb_build_array(jsonb_build_object('at', '2026-12-03T10:00:01.000Z', 'status_code', 500, 'error', 'HTTP 500', 'duration_ms', 12)) where id = $1`,
      [filtered.items[0].id],
    );
    const detail = (await get('/api/v1/webhook-endpoints/:id/deliveries/:delivery_id', `/api/v1/webhook-endpoints/${first.id}/deliveries/${filtered.items[0].id}`, admin)).json;
    expect(detail.attempt_log).toEqual([{ at: '2026-12-03T10:00:01.000Z', status_code: 500, error: 'HTTP 500', duration_ms: 12 }]);
    // A resend enqueues the delivery's job: the webhooks queue is paused first, so no worker POSTs to the (public) URL.
    await stack.container.queues.get(WEBHOOK_QUEUE)!.pause();
    await stack.db.admin(`update webhook_deliveries set status = 'failed', attempts = 1, next_attempt_at = null where endpoint_id = $1`, [first.id]);
    const [given] = deliveries.items as Array<{ id: string }>;
    const resent = await api(stack, 'POST', `/api/v1/webhook-endpoints/${first.id}/deliveries/${given!.id}/resend`, { token: admin, headers: { 'Idempotency-Key': randomUUID() } });
    expect(expectPublished('POST', '/api/v1/webhook-endpoints/:id/deliveries/:delivery_id/resend', resent, 202).json).toMatchObject({ id: given!.id, status: 'pending', resends: 1 });
    const recovered = await api(stack, 'POST', `/api/v1/webhook-endpoints/${first.id}/deliveries/resend`, { token: admin, body: { since: '2020-01-01T00:00:00Z' }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(expectPublished('POST', '/api/v1/webhook-endpoints/:id/deliveries/resend', recovered, 202).json).toEqual({ resent: 3, has_more: false });
    // A test event is enqueued as well (the queue still paused: nothing is POSTed); the list then shows its payload as published.
    const tested = await api(stack, 'POST', `/api/v1/webhook-endpoints/${first.id}/test`, { token: admin, headers: { 'Idempotency-Key': randomUUID() } });
    expect(expectPublished('POST', '/api/v1/webhook-endpoints/:id/test', tested, 202).json).toMatchObject({ event_type: 'webhook.test', status: 'pending', payload: { type: 'webhook.test', data: { endpoint_id: first.id } } });
    expect((await get('/api/v1/webhook-endpoints/:id/deliveries', `/api/v1/webhook-endpoints/${first.id}/deliveries?limit=1`, admin)).json.items[0].id).toBe(tested.json.id);
    const rotated = await api(stack, 'POST', `/api/v1/webhook-endpoints/${first.id}/rotate-secret`, { token: admin, body: { previous_secret_expires_in_seconds: 60 }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(expectPublished('POST', '/api/v1/webhook-endpoints/:id/rotate-secret', rotated, 200).json.secret).toMatch(/^whsec_/);
    const disable = await api(stack, 'POST', `/api/v1/webhook-endpoints/${first.id}/disable`, { token: admin });
    expect(expectPublished('POST', '/api/v1/webhook-endpoints/:id/disable', disable, 200).json).toMatchObject({ enabled: false, disabled_reason: 'manual' });
    const enable = await api(stack, 'POST', `/api/v1/webhook-endpoints/${first.id}/enable`, { token: admin });
    expect(expectPublished('POST', '/api/v1/webhook-endpoints/:id/enable', enable, 200).json).toMatchObject({ enabled: true, disabled_reason: null });
    const updated = await api(stack, 'PATCH', `/api/v1/webhook-endpoints/${first.id}`, { token: admin, body: { events: ['run.failed'], description: null } });
    expect(expectPublished('PATCH', '/api/v1/webhook-endpoints/:id', updated, 200).json).toMatchObject({ id: first.id, events: ['run.failed'], description: null });
    const deleted = await api(stack, 'DELETE', `/api/v1/webhook-endpoints/${first.id}`, { token: admin });
    expectPublished('DELETE', '/api/v1/webhook-endpoints/:id', deleted, 204);
  });

  it("a tenant's limits read, set and removed by an operator as published", async () => {
    const operator = await stack.token({ tenantId: newTenant(), sub: 'ops', roles: [OPERATOR_ROLE] });
    const tenant = newTenant();
    const path = `/api/v1/operator/tenants/${tenant}/limits`;
    const template = '/api/v1/operator/tenants/:tenant_id/limits';
    await get(template, path, operator);
    const put = await api(stack, 'PUT', path, { token: operator, body: { max_active_runs: 2, max_runs_in_flight: null }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(expectPublished('PUT', template, put, 200).json.max_active_runs.override).toBe(2);
    expect((await get(template, path, operator)).json.updated_by).toBe('ops');
    const list = await get('/api/v1/operator/tenant-limits', '/api/v1/operator/tenant-limits?limit=100', operator);
    expect(list.json.items.map((i: { tenant_id: string }) => i.tenant_id)).toContain(tenant);
    const del = await api(stack, 'DELETE', path, { token: operator, headers: { 'Idempotency-Key': randomUUID() } });
    expect(expectPublished('DELETE', template, del, 200).json.updated_at).toBeNull();
  });

  it("a read whose ETag is sent back answers 304 as published, and a handler's 4xx replayed under its key answers as published", async () => {
    // A tenant of its own: nothing changes its policy or its runs meanwhile, so the body stays the same.
    const reader = await stack.token({ tenantId: newTenant(), sub: 'conditional-reader' });
    for (const template of ['/api/v1/approval-policy', '/api/v1/golden-path/runs']) {
      const first = await get(template, template, reader);
      const etag = first.headers.get('etag');
      expect(etag, template).toMatch(/^W\/"/);
      // By node:http: fetch would add Cache-Control: no-cache, and get the full 200 (docs/api.md, Conventions).
      const again = await rawGet(`${stack.baseUrl}${template}`, { authorization: `Bearer ${reader}`, 'if-none-match': etag! });
      expect(expectPublished('GET', template, again, 304).headers.get('etag'), template).toBe(etag);
    }
    // A cancel of a run the tenant does not have: the handler's 404 is the key's answer, and replays.
    const path = `/api/v1/golden-path/runs/${randomUUID()}/cancel`;
    const key = { 'Idempotency-Key': randomUUID() };
    expectPublished('POST', '/api/v1/golden-path/runs/:id/cancel', await api(stack, 'POST', path, { token: tok.submitter!, headers: key }), 404);
    const replay = expectPublished('POST', '/api/v1/golden-path/runs/:id/cancel', await api(stack, 'POST', path, { token: tok.submitter!, headers: key }), 404);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
  });

  it('checked a real response against every success response that a route publishes', () => {
    const published = stack.container.routes.flatMap((def) =>
      Object.keys(def.responses)
        .filter((code) => Number(code) < 300)
        .map((code) => `${def.method.toUpperCase()} ${def.path} ${code}`),
    );
    expect(published.length).toBeGreaterThan(0);
    // The other tests of this describe record what they checked: run alone (-t), this one lists every route.
    expect(
      published.filter((label) => !checked.has(label)),
      'success responses no test above checked against a real response: add a case that does (docs/runtime.md, *Adding a workflow*, step 7); run with the whole file, not alone',
    ).toEqual([]);
  });
});
