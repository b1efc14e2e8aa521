import { OpenAPIRegistry, OpenApiGeneratorV31, type ResponseConfig, type RouteConfig } from '@asteasolutions/zod-to-openapi';
import { z, type ZodObject, type ZodType } from 'zod';
import { MUTATING_METHODS, type RouteDef } from './route.ts';
import { CORRELATION_HEADER } from './correlation.ts';
import { PROBLEM_CONTENT_TYPE } from './problem.middleware.ts';
import { PROBLEM_TYPE_BASE } from '../errors/to-problem.ts';
import { webhookPayload } from '../webhooks/webhook-events.ts';

/** RFC 9457 problem details, as every error response is shaped (errors/to-problem.ts). */
const problemSchema = z
  .object({
    type: z.string().describe(`${PROBLEM_TYPE_BASE}<code>`),
    title: z.string(),
    status: z.number().int(),
    code: z.string().describe('Stable machine-readable error code'),
    detail: z.string().optional(),
    request_id: z.string().optional().describe('Quote it when reporting a problem'),
    errors: z.array(z.object({ path: z.string(), message: z.string() })).optional().describe('validation_failed: each bad field'),
    // Extension members (RFC 9457) some codes carry (docs/api.md, "Status codes"); a client ignores those it does not know.
    run_id: z.string().optional().describe('partner_already_offboarded: the run that holds the partner; run_deleted: the removed run'),
    run_status: z.string().nullable().optional().describe('run_not_active, run_not_failed, run_not_retryable, workflow_version_retired, partner_already_offboarded: the run\'s status (null: that run was removed by run retention)'),
    offboarding_status: z.string().nullable().optional().describe('partner_already_offboarded: the holding offboarding record\'s status (null: its run has not frozen the partner yet)'),
    approval_status: z.string().optional().describe('run_deleted: the approval request\'s status, as GET reads it'),
    workflow: z.string().optional().describe('workflow_version_retired: the run\'s workflow'),
    workflow_version: z.number().int().optional().describe('workflow_version_retired: the retired version'),
    current_version: z.number().int().optional().describe('workflow_version_retired: the version a new submission runs on'),
    pending: z.number().int().optional().describe('too_many_pending_changes: the policy changes pending'),
    limit: z.number().int().optional().describe('too_many_pending_changes: the most a tenant may have pending'),
  })
  .meta({ id: 'Problem' });

const responseHeaders = z.object({
  [CORRELATION_HEADER]: z.string().describe('The request\'s correlation id: the one sent, or a generated one'),
  'X-Request-Id': z.string().describe('Unique per request'),
});

const retryAfter = { 'Retry-After': z.string().describe('Seconds to wait before retrying') };
const replayed = { 'Idempotent-Replayed': z.literal('true').optional().describe('Present on a replay of the stored response of an earlier request with the same Idempotency-Key') };
/** A read's answer (docs/api.md, Conventions): a weak ETag of its body, which `If-None-Match` turns into a 304 while it holds. */
const etag = { ETag: z.string().describe('A weak validator of the body (W/"…"); send it back in If-None-Match for a 304 while the body would be the same') };
/**
 * The error statuses a handler's answer may have and its key then replays (router.ts, isStoredOutcome):
 * a 4xx other than 429; never 401, 413 or 415, which are answered before the key is claimed.
 */
const REPLAYABLE_ERRORS = new Set([400, 403, 404, 409, 410, 422]);

function problem(description: string, codes: string[], headers: Record<string, ZodType> = {}): ResponseConfig {
  return {
    description: `${description} (code: ${codes.join(', ')})`,
    headers: responseHeaders.extend(headers),
    content: { [PROBLEM_CONTENT_TYPE]: { schema: problemSchema } },
  };
}

/** The error responses a route can give, from what it declares (auth, roles, params, body, idempotency, admission). */
function errorResponses(def: RouteDef): Record<number, ResponseConfig> {
  const mutating = MUTATING_METHODS.has(def.method);
  const out: Record<number, ResponseConfig> = {};
  // Every route validates its query (a parameter it does not take is refused); a mutating route reads
  // a body whether or not it declares one (one that takes none refuses one: router.ts) and a key.
  const bad = [
    'validation_failed',
    mutating ? 'malformed_json' : '',
    // A body that does not decode under its Content-Encoding (one sent as gzip that is not).
    mutating ? 'bad_request' : '',
    mutating && def.idempotency === 'required' ? 'validation_failed (missing Idempotency-Key)' : '',
  ].filter(Boolean);
  out[400] = problem('Bad request', bad);
  // A revoked token (token-revocations.ts) verified, and is refused with RFC 6750's invalid_token.
  out[401] = problem(
    'Missing, expired or invalid bearer token (`unauthorized`, WWW-Authenticate: `Bearer`), or one a platform operator revoked (`token_revoked`, WWW-Authenticate: `Bearer error="invalid_token"`): a new token is needed',
    ['unauthorized', 'token_revoked'],
    { 'WWW-Authenticate': z.enum(['Bearer', 'Bearer error="invalid_token"']).describe('`Bearer`; `Bearer error="invalid_token"` for a revoked token (`token_revoked`)') },
  );
  if (def.roles?.length) out[403] = problem(`Needs one of the roles: ${def.roles.join(', ')}`, ['forbidden']);
  if (def.params) out[404] = problem('Not found for this tenant (or a malformed id)', ['not_found', 'validation_failed']);
  // Retry-After comes with idempotency_key_in_use only: a route's own 409s (run_not_active, …) have none.
  if (mutating) out[409] = problem('A request with this Idempotency-Key is still being processed', ['idempotency_key_in_use'], { 'Retry-After': retryAfter['Retry-After'].optional() });
  if (mutating) {
    out[413] = problem('The body is larger than the limit', ['payload_too_large']);
    out[415] = problem(
      def.body
        ? 'The body must be application/json (or another application/*+json type), in UTF-8, UTF-16 or UTF-32 (a charset spelled utf-…), without an unsupported content encoding'
        : 'This operation takes no body (an empty JSON object is none); one that is not JSON, or in an unsupported charset or content encoding, is refused',
      ['unsupported_media_type', 'unsupported_encoding'],
    );
  }
  if (mutating) out[422] = problem('Invalid body, or an Idempotency-Key reused with a different request', ['validation_failed', 'idempotency_key_reused']);
  // Only a route that declares admission goes through the limits (the router applies them from the same field).
  // Every route authenticates, and then counts against the tenant's share of the API's in-flight
  // requests (router.ts); a route with `admission` also against the tenant's submission limits.
  out[429] = problem(
    def.admission
      ? 'A tenant limit is exceeded: requests in progress, submissions per minute, or runs in flight (see Retry-After)'
      : 'The tenant has API_MAX_INFLIGHT_PER_TENANT requests in progress on this API instance (see Retry-After)',
    ['rate_limited'],
    retryAfter,
  );
  out[500] = problem('Unexpected error', ['internal']);
  // Any route's statement may wait out DATABASE_STATEMENT_TIMEOUT (a row lock held elsewhere): to-problem.ts.
  out[503] = problem(
    'The API is at capacity, a backing service is unavailable, or a statement waited out the database statement timeout (see Retry-After)',
    ['service_unavailable', 'database_timeout'],
    retryAfter,
  );
  return out;
}

const toOpenApiPath = (p: string) => p.replace(/:([A-Za-z0-9_]+)/g, '{$1}');

/**
 * Refusals of any request, before any route (docs/api.md, "Status codes"): published once in
 * components.responses. 408 and 431 (Node's HTTP parser, client-error.ts) are referenced by every
 * operation; 405 belongs to a method a path does not list, so to no operation: the document's
 * description names it.
 */
const COMMON_RESPONSES = {
  MethodNotAllowed: rawProblem('A method the path does not list: `Allow` names those it answers (OPTIONS answers 204 with the same `Allow`)', ['method_not_allowed'], {
    Allow: { description: 'The methods the path answers, e.g. `GET, HEAD`', required: true, schema: { type: 'string' } },
  }),
  RequestTimeout: rawProblem('The request did not arrive whole within API_REQUEST_TIMEOUT (its headers within the lesser of that and 20 s); the connection closes. Retry, with the same Idempotency-Key', ['request_timeout']),
  HeadersTooLarge: rawProblem('The request line and headers exceed 16 kB together (most often a bearer token carrying too many claims); the connection closes', ['headers_too_large']),
};

/** problem(), written out as OpenAPI (a component is registered as such, not generated from zod). */
function rawProblem(description: string, codes: string[], headers: Record<string, { description: string; required: boolean; schema: { type: 'string' } }> = {}) {
  const text = (d: string) => ({ description: d, required: true, schema: { type: 'string' as const } });
  return {
    description: `${description} (code: ${codes.join(', ')})`,
    headers: { [CORRELATION_HEADER]: text("The request's correlation id: the one sent, or a generated one"), 'X-Request-Id': text('Unique per request'), ...headers },
    content: { [PROBLEM_CONTENT_TYPE]: { schema: { $ref: '#/components/schemas/Problem' } } },
  };
}
const commonResponse = (name: keyof typeof COMMON_RESPONSES) => ({ $ref: `#/components/responses/${name}` });

function routeConfig(def: RouteDef, withSchemas: boolean): RouteConfig {
  const responses: Record<string, ResponseConfig | { $ref: string }> = {};
  const errors = errorResponses(def);
  for (const [code, r] of Object.entries(errors)) responses[code] = r;
  responses[408] = commonResponse('RequestTimeout');
  responses[431] = commonResponse('HeadersTooLarge');
  for (const [code, r] of Object.entries(def.responses)) {
    const status = Number(code);
    const isError = status >= 400;
    const success = {
      ...(r.location ? { Location: z.string().describe('The created or accepted resource') } : {}),
      ...(MUTATING_METHODS.has(def.method) ? replayed : {}),
      ...(def.method === 'get' && status !== 204 ? etag : {}),
      ...Object.fromEntries(Object.entries(r.headers ?? {}).map(([name, value]) => [name, z.literal(value)])),
    };
    responses[code] = {
      // A route's own description of an error adds to what the router answers with that status.
      description: isError && errors[status] ? `${r.description}; or: ${errors[status].description}` : r.description,
      // A route's own description of an error keeps the headers that error carries (Retry-After, …).
      headers: isError ? ((errors[status]?.headers as typeof responseHeaders | undefined) ?? responseHeaders) : responseHeaders.extend(success),
      ...(status === 204
        ? {}
        : {
            content: isError
              ? { [PROBLEM_CONTENT_TYPE]: { schema: problemSchema } }
              : { 'application/json': { schema: withSchemas && r.schema ? r.schema : z.looseObject({}) } },
          }),
    };
  }
  if (def.method === 'get') {
    // A conditional read (If-None-Match) whose body would be the same: no body, the same ETag.
    responses[304] = { description: 'Not Modified: If-None-Match names the ETag of the body this request would get; no body', headers: responseHeaders.extend(etag) };
  }
  // A handler's 4xx is stored under the Idempotency-Key, and its replays say so.
  if (MUTATING_METHODS.has(def.method)) {
    for (const [code, r] of Object.entries(responses)) {
      if (REPLAYABLE_ERRORS.has(Number(code)) && !('$ref' in r)) r.headers = (r.headers as typeof responseHeaders).extend(replayed);
    }
  }
  const key = z.string().min(1).max(255).describe('Unique per intended operation; a retry with the same key and body replays the first response');
  const headers = z.object({
    [CORRELATION_HEADER]: z.string().optional().describe('Your correlation id ([A-Za-z0-9._:-], up to 128); one is generated when absent or invalid'),
    ...(MUTATING_METHODS.has(def.method) ? { 'Idempotency-Key': def.idempotency === 'required' ? key : key.optional() } : {}),
    ...(def.method === 'get' ? { 'If-None-Match': z.string().optional().describe('The ETag of a body read before: 304 without a body while it would be the same') } : {}),
  });
  return {
    method: def.method,
    path: toOpenApiPath(def.path),
    summary: def.summary,
    tags: def.tags,
    operationId: `${def.method}${def.path.replace(/[^A-Za-z0-9]+(.)?/g, (_m, c: string | undefined) => (c ? c.toUpperCase() : ''))}`,
    security: [{ bearerAuth: [] }],
    request: {
      headers,
      ...(withSchemas && def.params ? { params: def.params as unknown as ZodObject } : {}),
      ...(withSchemas && def.query ? { query: def.query as unknown as ZodObject } : {}),
      // A body the route may go without (its schema accepts none, e.g. all-defaults options) is published as optional.
      ...(def.body ? { body: { required: !def.body.safeParse(undefined).success, content: { 'application/json': { schema: withSchemas ? def.body : z.looseObject({}) } } } } : {}),
    },
    responses,
  };
}

const healthSchema = z.object({ status: z.literal('ok') });
/** The `queues` check's queues with a global limit in Redis (health.ts QueueLimits): each field only when set. */
const queueLimitsSchema = z.object({
  queue: z.string(),
  concurrency: z.number().int().optional(),
  rate_limit: z.object({ max: z.number().int(), duration_ms: z.number().int() }).optional(),
});
// `paused` and `limited`: the `queues` check's (never failing: docs/operations.md, Health and readiness).
const readySchema = z.object({
  status: z.literal('ready'),
  checks: z.record(z.string(), z.object({ ok: z.boolean(), detail: z.string().optional(), paused: z.array(z.string()).optional(), limited: z.array(queueLimitsSchema).optional() })),
});

/** Operational endpoints outside container.routes: public, unauthenticated. */
function operationalRoutes(): RouteConfig[] {
  const plain = (description: string, schema: ZodType, type = 'application/json'): ResponseConfig => ({ description, content: { [type]: { schema } } });
  return [
    { method: 'get', path: '/healthz', summary: 'Liveness: the process is up', tags: ['operations'], responses: { 200: plain('Alive', healthSchema) } },
    {
      method: 'get',
      path: '/readyz',
      summary: 'Readiness: PostgreSQL and Redis answer, migrations are current, and this instance has loaded the token revocation list',
      tags: ['operations'],
      responses: { 200: plain('Ready', readySchema), 503: problem('Not ready; `detail` names each failing check', ['not_ready']) },
    },
    { method: 'get', path: '/metrics', summary: 'Prometheus metrics (text exposition format)', tags: ['operations'], responses: { 200: plain('Metrics', z.string(), 'text/plain') } },
    { method: 'get', path: '/openapi.json', summary: 'This document', tags: ['operations'], responses: { 200: plain('OpenAPI 3.1', z.looseObject({})) } },
    { method: 'get', path: '/docs', summary: 'This document rendered as one self-contained HTML page', tags: ['operations'], responses: { 200: plain('HTML', z.string(), 'text/html') } },
  ];
}

/**
 * What the platform POSTs to a tenant's webhook endpoint (docs/api.md, Webhooks): an OpenAPI 3.1
 * webhook, its body `WebhookPayload`, signed per Standard Webhooks.
 */
function webhookMessage(): RouteConfig {
  return {
    method: 'post',
    path: 'event',
    summary: 'An event, POSTed to each enabled endpoint subscribed to its type (at least once: deduplicate by webhook-id)',
    tags: ['webhooks'],
    request: {
      headers: z.object({
        'webhook-id': z.string().describe('The delivery id: the same on every attempt and resend of the message'),
        'webhook-timestamp': z.string().describe('Unix seconds of this attempt, signed (Standard Webhooks: refuse one older than 5 minutes)'),
        'webhook-signature': z.string().describe('v1,<base64 HMAC-SHA256> with the endpoint secret; during a rotation\'s overlap two, space-separated (the new secret\'s first)'),
      }),
      body: { required: true, content: { 'application/json': { schema: webhookPayload } } },
    },
    responses: { 200: { description: 'Any 2xx within WEBHOOK_TIMEOUT: delivered (the body is ignored); anything else, a redirect included, is a failed attempt, retried' } },
  };
}

export interface OpenApiResult {
  document: Record<string, unknown>;
  /** Routes whose zod schemas could not be converted (documented without them). Empty when all is well. */
  problems: string[];
}

/** The OpenAPI 3.1 document of the API, generated from the route declarations' zod schemas. */
export function buildOpenApi(routes: RouteDef[], info: { title?: string; version?: string } = {}): OpenApiResult {
  const problems: string[] = [];
  const registry = new OpenAPIRegistry();
  registry.registerComponent('securitySchemes', 'bearerAuth', {
    type: 'http',
    scheme: 'bearer',
    bearerFormat: 'JWT',
    description: 'A JWT with sub, tenant_id (UUID) and roles; the tenant comes from the token only.',
  });
  for (const [name, response] of Object.entries(COMMON_RESPONSES)) registry.registerComponent('responses', name, response);
  for (const def of routes) {
    try {
      // Generate each route alone first, so one unconvertible schema cannot take the document down.
      const probe = new OpenAPIRegistry();
      probe.registerPath(routeConfig(def, true));
      new OpenApiGeneratorV31(probe.definitions).generateDocument({ openapi: '3.1.0', info: { title: 'probe', version: '0' } });
      registry.registerPath(routeConfig(def, true));
    } catch (e) {
      problems.push(`${def.method.toUpperCase()} ${def.path}: ${(e as Error).message}`);
      registry.registerPath(routeConfig(def, false));
    }
  }
  for (const r of operationalRoutes()) registry.registerPath(r);
  registry.registerWebhook(webhookMessage());
  const document = new OpenApiGeneratorV31(registry.definitions).generateDocument({
    openapi: '3.1.0',
    info: {
      title: info.title ?? 'Dealix worker platform API',
      version: info.version ?? '0.1.0',
      description:
        'Durable, multi-tenant background work. Every response carries X-Correlation-Id; errors are RFC 9457 problem+json. ' +
        'POST/PUT/PATCH/DELETE take an Idempotency-Key. ' +
        'A method a path does not list answers 405 method_not_allowed with Allow (components.responses.MethodNotAllowed); ' +
        'any request may answer 408 request_timeout or 431 headers_too_large (components.responses, referenced by every operation).',
    },
    tags: [...new Set([...routes.flatMap((r) => r.tags), 'operations'])].map((name) => ({ name })),
  });
  return { document: document as unknown as Record<string, unknown>, problems };
}
