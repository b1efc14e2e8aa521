import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, startStack, type TestStack } from '../helpers/stack.ts';
import { buildOpenApi } from '../../src/platform/http/openapi.ts';
import { MUTATING_METHODS } from '../../src/platform/http/route.ts';

let stack: TestStack;
beforeAll(async () => {
  stack = await startStack();
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
      expect(op.responses['200'] ?? op.responses['201'] ?? op.responses['202']).toBeDefined();
      const params = (op.parameters ?? []).map((p: { in: string; name: string }) => `${p.in}:${p.name}`);
      for (const name of def.path.match(/:([A-Za-z0-9_]+)/g) ?? []) expect(params).toContain(`path:${name.slice(1)}`);
      if (['post', 'put', 'patch'].includes(def.method)) {
        expect(params).toContain('header:Idempotency-Key');
        expect(op.responses['409']).toBeDefined();
        expect(op.responses['422']).toBeDefined();
      }
      if (def.body) expect(op.requestBody.content['application/json'].schema.type).toBe('object');
    }
    expect(Object.keys(doc.paths)).toEqual(expect.arrayContaining(['/healthz', '/readyz', '/metrics']));
  });

  it('documents the headers a client acts on: Location, Idempotent-Replayed, Retry-After, WWW-Authenticate', async () => {
    const doc = (await api(stack, 'GET', '/openapi.json')).json;
    const submit = doc.paths['/api/v1/golden-path/run'].post.responses;
    expect(Object.keys(submit['202'].headers)).toEqual(expect.arrayContaining(['Location', 'Idempotent-Replayed', 'X-Correlation-Id']));
    expect(Object.keys(submit['409'].headers)).toContain('Retry-After');
    expect(Object.keys(submit['429'].headers)).toContain('Retry-After');
    expect(Object.keys(submit['503'].headers)).toContain('Retry-After');
    expect(Object.keys(submit['401'].headers)).toContain('WWW-Authenticate');
    const read = doc.paths['/api/v1/golden-path/runs/{id}'].get.responses;
    expect(Object.keys(read['200'].headers)).not.toContain('Idempotent-Replayed');
  });

  it('converts every route schema (no route falls back to an untyped body)', () => {
    expect(buildOpenApi(stack.container.routes).problems).toEqual([]);
  });

  it('serves a self-contained docs page listing every route, with no external resources', async () => {
    const res = await api(stack, 'GET', '/docs');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/html');
    for (const def of stack.container.routes) expect(res.text).toContain(openApiPath(def.path));
    expect(res.text).not.toMatch(/<script|src="http|href="http/);
  });
});

describe('429 rate_limited is documented exactly for the routes that go through admission', () => {
  it('lists 429 on a route if and only if it declares admission, the field the router admits it by', async () => {
    const doc = (await api(stack, 'GET', '/openapi.json')).json;
    const limited: string[] = [];
    for (const def of stack.container.routes) {
      const label = `${def.method.toUpperCase()} ${def.path}`;
      const responses = doc.paths[openApiPath(def.path)][def.method].responses;
      expect('429' in responses, label).toBe(def.admission !== undefined);
      if ('429' in responses) {
        limited.push(label);
        expect(responses['429'].content['application/problem+json'].schema).toEqual({ $ref: '#/components/schemas/Problem' });
        expect(Object.keys(responses['429'].headers)).toContain('Retry-After');
      }
    }
    expect(limited).toEqual(['POST /api/v1/golden-path/run']);
    // Not "every mutating route": these mutate, and no limit stands in their way.
    const unlimitedMutating = stack.container.routes.filter((d) => MUTATING_METHODS.has(d.method) && !d.admission).map((d) => `${d.method.toUpperCase()} ${d.path}`);
    expect(unlimitedMutating).toEqual(expect.arrayContaining(['POST /api/v1/approvals/:id/decision', 'PUT /api/v1/approval-policy']));
  });
});
