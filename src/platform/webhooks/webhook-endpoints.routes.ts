import { randomBytes, randomUUID } from 'node:crypto';
import { z } from 'zod';
import type { EntityManager } from '@mikro-orm/postgresql';
import { defineRoute, type RouteDef } from '../http/route.ts';
import { ConflictError, NotFoundError, ServiceUnavailableError, ValidationError } from '../errors/app-error.ts';
import { DEFER_UNTIL_NEXT } from '../db/coalescing-client.ts';
import { nextCursor, pageLimit, pageSchema, pageWhere } from '../http/cursor.ts';
import { isoTime, toIsoTime, toIsoTimeOrNull } from '../http/iso-time.ts';
import { ADMIN_ROLE } from '../tenancy/roles.ts';
import type { Queue } from 'bullmq';
import { DELIVERY_EVENT_TYPES, DELIVERY_STATUSES, DISABLED_REASONS, WEBHOOK_EVENT_TYPES, WEBHOOK_RATE_LIMIT_MAX, WEBHOOK_RATE_LIMIT_MIN } from './webhook.entities.ts';
import { recallWaiting, type EndpointRates } from './rate-limit.ts';
import { resolvedRefusal, urlOrigin, type UrlPolicy } from './ssrf.ts';
import type { HostResolver } from './resolve.ts';
import { webhookPayload } from './webhook-events.ts';
import { deliveriesLockKey } from './retention.ts';

export const WEBHOOK_ENDPOINTS_PATH = '/api/v1/webhook-endpoints';
const TAGS = ['webhooks'];

/**
 * The fields an admin sets on an endpoint: the create's body, and (each optional) the update's. One
 * place: a field added here is accepted by both.
 */
const endpointFields = {
  url: z.string().max(2048).describe('Where events are POSTed: https:// in production; its host must resolve to public addresses only'),
  events: z.array(z.enum(WEBHOOK_EVENT_TYPES)).min(1).max(WEBHOOK_EVENT_TYPES.length).describe('The event types this endpoint receives'),
  description: z.string().max(500).optional(),
  rate_limit_per_second: z
    .number()
    .int()
    .min(WEBHOOK_RATE_LIMIT_MIN)
    .max(WEBHOOK_RATE_LIMIT_MAX)
    .nullable()
    .optional()
    .describe(`At most this many requests a second to this endpoint (${WEBHOOK_RATE_LIMIT_MIN}-${WEBHOOK_RATE_LIMIT_MAX}), over every worker; deliveries over it wait for their turn, spending no attempt. Absent or null: no limit`),
};
const endpointBody = z.strictObject(endpointFields);

type PatchShape<S extends Record<string, z.ZodType>> = { [K in keyof S]: z.ZodOptional<S[K] extends z.ZodDefault<infer I> ? I : S[K]> };

/**
 * An update's fields from a create's: each optional, **without its default**. `.partial()` alone keeps a
 * field's `.default()`, and an update that did not send the field would reset it to the default.
 */
export function patchOf<S extends Record<string, z.ZodType>>(shape: S): PatchShape<S> {
  return Object.fromEntries(Object.entries(shape).map(([k, s]) => [k, (s instanceof z.ZodDefault ? (s.unwrap() as z.ZodType) : s).optional()])) as PatchShape<S>;
}

/**
 * The update's body: any of the create's fields (unknown ones refused, as by the create), at least one;
 * `description: null` clears the description.
 */
export const endpointPatch = z
  .strictObject({ ...patchOf(endpointFields), description: endpointFields.description.unwrap().nullable().optional() })
  .refine((b) => Object.values(b).some((v) => v !== undefined), { message: 'Send at least one field to change' })
  // The refinement, as the OpenAPI document can say it (a refine is not converted).
  .meta({ minProperties: 1 });

const endpointView = z
  .strictObject({
    id: z.string().uuid(),
    url: z.string(),
    events: z.array(z.enum(WEBHOOK_EVENT_TYPES)),
    description: z.string().nullable(),
    enabled: z.boolean().describe('false once disabled: it receives no new events, and its pending deliveries are given up'),
    created_by: z.string(),
    created_at: isoTime,
    disabled_at: isoTime.nullable(),
    previous_secret_expires_at: isoTime
      .nullable()
      .describe('Until when deliveries are also signed with the secret the last rotation replaced (a second `v1,` signature); null when none is live'),
    disabled_reason: z
      .enum(DISABLED_REASONS)
      .nullable()
      .describe('Why it is disabled: `manual` (POST …/disable) or `failing` (its deliveries failed for WEBHOOK_DISABLE_AFTER with no 2xx); null while enabled'),
    failing_since: isoTime.nullable().describe('Its first failed attempt since its last 2xx, creation or re-enabling; null while its last attempt succeeded'),
    rate_limit_per_second: z.number().int().nullable().describe('At most this many requests a second to it, over every worker; null: no limit'),
    links: z.strictObject({ self: z.string(), deliveries: z.string() }),
  })
  .meta({ id: 'WebhookEndpoint' });
type EndpointView = z.infer<typeof endpointView>;

/** An endpoint with its signing secret: the answer of the create and of a rotation, the only ones that show it. */
const withSecret = (id: string) =>
  endpointView.extend({ secret: z.string().describe('The signing secret (`whsec_<base64>`), shown only in this answer (and its idempotent replay): verify each webhook with it (Standard Webhooks)') }).meta({ id });
const createdView = withSecret('WebhookEndpointCreated');
const rotatedView = withSecret('WebhookEndpointRotated');

/** How long a rotated-out secret keeps signing beside the new one: by default, and at most (ADR 0013). */
export const PREVIOUS_SECRET_DEFAULT_SECONDS = 24 * 3600;
export const PREVIOUS_SECRET_MAX_SECONDS = 7 * 24 * 3600;

const rotateBody = z
  .strictObject({
    previous_secret_expires_in_seconds: z
      .number()
      .int()
      .min(0)
      .max(PREVIOUS_SECRET_MAX_SECONDS)
      .default(PREVIOUS_SECRET_DEFAULT_SECONDS)
      .describe('How long deliveries stay signed with the current secret too, beside the new one (default 24 h, at most 7 days); 0 drops it at once'),
  })
  .optional();

const endpointPage = pageSchema(endpointView).meta({ id: 'WebhookEndpointPage' });

export const deliveryView = z
  .strictObject({
    id: z.string().uuid().describe('Also the `webhook-id` header: receivers deduplicate by it (deliveries are at least once)'),
    event_type: z.enum(DELIVERY_EVENT_TYPES).describe('`webhook.test` for a test event (POST …/:id/test)'),
    status: z.enum(DELIVERY_STATUSES),
    attempts: z.number().int().min(0),
    last_status_code: z.number().int().nullable(),
    last_error: z.string().nullable(),
    last_attempt_at: isoTime.nullable(),
    next_attempt_at: isoTime.nullable().describe('When the next attempt is due (pending); null once delivered or failed'),
    delivered_at: isoTime.nullable(),
    created_at: isoTime,
    // The component itself (a .describe() would be a copy of it, inlined without its name).
    payload: webhookPayload,
    resent_at: isoTime.nullable().describe("An admin's last resend of it (POST …/resend): the same event, the same `webhook-id`; null if never resent"),
    resends: z.number().int().min(0).describe('How often an admin resent it'),
  })
  .meta({ id: 'WebhookDelivery' });

interface EndpointRow {
  id: string;
  url: string;
  events: string[];
  description: string | null;
  enabled: boolean;
  created_by: string;
  created_at: Date;
  disabled_at: Date | null;
  previous_secret_expires_at: Date | null;
  disabled_reason: EndpointView['disabled_reason'];
  failing_since: Date | null;
  rate_limit_per_second: number | null;
}
/** An endpoint as its views show it: never a secret; a previous secret's expiry only while it is live (database clock). */
const ENDPOINT_COLUMNS =
  'id, url, events, description, enabled, created_by, created_at, disabled_at, disabled_reason, failing_since, rate_limit_per_second, case when previous_secret_expires_at > now() then previous_secret_expires_at end as previous_secret_expires_at';

function toView(r: EndpointRow): EndpointView {
  return {
    id: r.id,
    url: r.url,
    events: r.events as EndpointView['events'],
    description: r.description,
    enabled: r.enabled,
    created_by: r.created_by,
    created_at: toIsoTime(r.created_at),
    disabled_at: toIsoTimeOrNull(r.disabled_at),
    previous_secret_expires_at: toIsoTimeOrNull(r.previous_secret_expires_at),
    disabled_reason: r.disabled_reason,
    failing_since: toIsoTimeOrNull(r.failing_since),
    rate_limit_per_second: r.rate_limit_per_second,
    links: { self: `${WEBHOOK_ENDPOINTS_PATH}/${r.id}`, deliveries: `${WEBHOOK_ENDPOINTS_PATH}/${r.id}/deliveries` },
  };
}

/**
 * The headers of an answer holding a signing secret (the create's, a rotation's, and their replays):
 * no browser or proxy cache keeps it (as OAuth's token answers, RFC 6749 section 5.1).
 */
const SECRET_ANSWER_HEADERS = { 'Cache-Control': 'no-store' } as const;

/** A signing secret as Standard Webhooks writes it: `whsec_` and 32 random bytes in base64. */
export const newSigningSecret = () => `whsec_${randomBytes(32).toString('base64')}`;

export const idParam = z.object({ id: z.string().uuid() });
export const adminOnly = { 403: { description: `Not an admin of the tenant (role ${ADMIN_ROLE})` } };

/**
 * The row lock of a change to an endpoint (rotate, disable; a test event's bound, test-event.ts): NO KEY UPDATE, which a transaction
 * inserting deliveries for the endpoint (its foreign key's KEY SHARE) neither waits for nor blocks.
 */
export const LOCK_ROW = ' for no key update';

export async function endpointById(em: EntityManager, tenantId: string, id: string, lock = ''): Promise<EndpointRow> {
  const [row] = await em.execute<EndpointRow[]>(`select ${ENDPOINT_COLUMNS} from webhook_endpoints where tenant_id = ? and id = ?${lock}`, [tenantId, id]);
  if (!row) throw new NotFoundError('webhook endpoint');
  return row;
}

/** An event type list as stored: a text[] literal, each type once. */
const eventsArray = (events: readonly string[]) => `{${[...new Set(events)].join(',')}}`;

/**
 * How an update's field is written: its column is the field's own name (the body's fields are the
 * schema's, never the client's); a field needing a cast or a conversion says so here.
 */
const PATCH_COLUMNS: Partial<Record<keyof typeof endpointFields, { cast?: string; value?: (v: never) => unknown }>> = {
  events: { cast: '::text[]', value: (v: string[]) => eventsArray(v) },
};

/** What an update's `prepare` found of the URL sent: whether it was a new one and so resolved, and its refusal if refused. */
interface UrlCheck {
  checked: boolean;
  refusal?: string | undefined;
}

/** The key of the per-tenant advisory lock below (`pg_advisory_xact_lock(hashtextextended(key, 0))`); exported for the test that holds it. */
export const enabledEndpointsLockKey = (tenantId: string) => `dealix:webhook_endpoints:${tenantId}`;

/**
 * Serialises, per tenant, what may add an enabled endpoint (create, enable) until the commit, so that
 * concurrent ones cannot each see room under WEBHOOK_MAX_ENDPOINTS; held back to travel with the next statement (one message).
 */
const lockEnabledEndpoints = (em: EntityManager, tenantId: string) =>
  em.execute(`${DEFER_UNTIL_NEXT}select pg_advisory_xact_lock(hashtextextended(?, 0))`, [enabledEndpointsLockKey(tenantId)]);

/**
 * Endpoints a tenant may have in all, disabled ones included: this many times WEBHOOK_MAX_ENDPOINTS (50
 * by default). The enabled cap alone let a create → disable loop grow webhook_endpoints without bound,
 * each row with a signing secret; disabled ones are kept for their history (their deliveries), so the
 * total is looser than the enabled cap, not equal to it.
 */
export const WEBHOOK_ENDPOINTS_TOTAL_FACTOR = 5;

/** The cap's condition, for an insert or update that adds an enabled endpoint (parameters: tenant id, cap). */
const UNDER_CAP = '(select count(*) from webhook_endpoints where tenant_id = ? and enabled) < ?';

/** The total cap's condition, for an insert (parameters: tenant id, total): disabled endpoints count too. */
const UNDER_TOTAL_CAP = '(select count(*) from webhook_endpoints where tenant_id = ?) < ?';

const totalLimitReached = (total: number) =>
  new ConflictError('webhook_endpoint_total_limit', `The tenant already has ${total} webhook endpoints, disabled ones included (${WEBHOOK_ENDPOINTS_TOTAL_FACTOR} × WEBHOOK_MAX_ENDPOINTS); delete one it no longer needs first.`);

const limitReached = (max: number) => new ConflictError('webhook_endpoint_limit', `The tenant already has ${max} enabled webhook endpoints (WEBHOOK_MAX_ENDPOINTS); disable or delete one first.`);

/**
 * The tenant's webhook endpoints (role admin): create (the secret shown once), list, read, update, delete, rotate the
 * secret (the new one shown once, the old one signing beside it for an overlap), disable, enable, and
 * (docs/api.md, *Webhooks*; ADR 0013). Its deliveries are read in deliveries.routes.ts.
 */
export function webhookEndpointRoutes(deps: {
  policy: UrlPolicy;
  /** Enabled endpoints a tenant may have (WEBHOOK_MAX_ENDPOINTS): every run end fans out to each subscribed one. */
  maxEndpoints: number;
  /** Resolves a new URL's host, within its bound (WEBHOOK_DNS_TIMEOUT, at most WEBHOOK_TIMEOUT); past it the create answers 503 (Retry-After, the key released). */
  resolver: HostResolver;
  /** The endpoints' rate limits: an update of one recalls the deliveries waiting for a turn under the old one; a delete or a disable recalls them and drops its keys. */
  rates?: { limits: EndpointRates; queue: () => Queue };
}): RouteDef[] {
  return [
    defineRoute({
      method: 'post',
      path: WEBHOOK_ENDPOINTS_PATH,
      summary: 'Create a webhook endpoint (role admin): its signing secret is in this answer only',
      tags: TAGS,
      roles: [ADMIN_ROLE],
      idempotency: 'required',
      body: endpointBody,
      responses: {
        201: { description: 'The endpoint, with its signing secret (Cache-Control: no-store)', schema: createdView, headers: SECRET_ANSWER_HEADERS, location: true },
        ...adminOnly,
        409: { description: 'The tenant already has WEBHOOK_MAX_ENDPOINTS enabled endpoints (`webhook_endpoint_limit`): disable or delete one first; or 5 × WEBHOOK_MAX_ENDPOINTS endpoints in all, disabled ones included (`webhook_endpoint_total_limit`): delete one first' },
        422: { description: 'Invalid body: not an http(s) URL (https:// in production), a host that does not resolve, resolves to a loopback, private, link-local or multicast address, or an unknown or no event type' },
        503: { description: 'The host could not be resolved within WEBHOOK_DNS_TIMEOUT (at most WEBHOOK_TIMEOUT), or its name servers failed for now (e.g. ESERVFAIL): nothing stored, the Idempotency-Key is free for a retry (Retry-After)' },
      },
      // The host is resolved before the request takes a place of its tenant's connection share and before the
      // transaction: its DNS is the tenant's, and may take the resolver's whole timeout; a pooled connection held
      // meanwhile would be the whole API's, a place the tenant's other requests' (webhook-create-dns.test.ts).
      // Bounded too (resolve.ts: c-ares, no threadpool thread): past WEBHOOK_DNS_TIMEOUT the create answers 503 (retryable, its key released) instead of holding a request slot of the tenant's.
      prepare: ({ body }) => resolvedRefusal(body.url, deps.policy, deps.resolver),
      async handler({ em, principal, body, prepared }) {
        const refusal = prepared as string | undefined;
        if (refusal) throw new ValidationError('Invalid request body', [{ path: 'url', message: refusal }], 422);
        const secret = newSigningSecret();
        // The caps: count-then-insert races (concurrent creates would each see room under them), so a lock
        // per tenant, held to the commit, serialises them; it travels with the insert (one message). The
        // total cap (disabled endpoints included) is checked in the same insert, under the same lock.
        await lockEnabledEndpoints(em, principal.tenantId);
        const total = WEBHOOK_ENDPOINTS_TOTAL_FACTOR * deps.maxEndpoints;
        const [row] = await em.execute<EndpointRow[]>(
          `insert into webhook_endpoints (id, tenant_id, url, description, events, secret, rate_limit_per_second, enabled, created_by, created_at, updated_at)
           select ?, ?, ?, ?, ?::text[], ?, ?::int, true, ?, date_trunc('milliseconds', now()), now()
            where ${UNDER_CAP} and ${UNDER_TOTAL_CAP}
           returning ${ENDPOINT_COLUMNS}`,
          [randomUUID(), principal.tenantId, body.url, body.description ?? null, eventsArray(body.events), secret, body.rate_limit_per_second ?? null, principal.sub, principal.tenantId, deps.maxEndpoints, principal.tenantId, total],
        );
        if (!row) {
          // Which cap, read under the same lock (nothing changed since the insert's count).
          const [n] = await em.execute<{ enabled: number }[]>(`select count(*)::int as enabled from webhook_endpoints where tenant_id = ? and enabled`, [principal.tenantId]);
          throw n!.enabled >= deps.maxEndpoints ? limitReached(deps.maxEndpoints) : totalLimitReached(total);
        }
        const view = toView(row);
        return { status: 201, body: { ...view, secret }, headers: { Location: view.links.self, ...SECRET_ANSWER_HEADERS } };
      },
    }),
    defineRoute({
      method: 'get',
      path: WEBHOOK_ENDPOINTS_PATH,
      summary: "The tenant's webhook endpoints (role admin), newest first, with cursor pagination",
      tags: TAGS,
      roles: [ADMIN_ROLE],
      query: z.strictObject({ limit: pageLimit(20), cursor: z.string().max(200).optional() }),
      responses: { 200: { description: 'A page of endpoints (never their secrets)', schema: endpointPage }, ...adminOnly },
      async handler({ em, principal, query }) {
        const params: unknown[] = [principal.tenantId];
        const where = pageWhere('tenant_id = ?', params, query);
        const rows = await em.execute<EndpointRow[]>(`select ${ENDPOINT_COLUMNS} from webhook_endpoints where ${where} order by created_at desc, id desc limit ?`, params);
        const page = rows.slice(0, query.limit);
        return { status: 200, body: { items: page.map(toView), next_cursor: nextCursor(page[page.length - 1], rows.length > query.limit) } };
      },
    }),
    defineRoute({
      method: 'get',
      path: `${WEBHOOK_ENDPOINTS_PATH}/:id`,
      summary: 'A webhook endpoint (role admin; never its secret)',
      tags: TAGS,
      roles: [ADMIN_ROLE],
      params: idParam,
      responses: { 200: { description: 'The endpoint', schema: endpointView }, ...adminOnly, 404: { description: 'No such endpoint for this tenant' } },
      async handler({ em, principal, params }) {
        return { status: 200, body: toView(await endpointById(em, principal.tenantId, params.id)) };
      },
    }),
    defineRoute({
      method: 'patch',
      path: `${WEBHOOK_ENDPOINTS_PATH}/:id`,
      summary: "Update a webhook endpoint (role admin): any of the create's fields; pending deliveries' next attempts go to a new URL, new events only to the new subscription",
      tags: TAGS,
      roles: [ADMIN_ROLE],
      idempotency: 'optional',
      params: idParam,
      body: endpointPatch,
      responses: {
        200: { description: 'The endpoint as updated (never its secret); a field not sent is unchanged', schema: endpointView },
        ...adminOnly,
        404: { description: 'No such endpoint for this tenant' },
        422: { description: 'Invalid body: no field, an unknown field, a new URL refused as by the create (not http(s), https:// in production, a host that does not resolve or resolves to a non-public address; the URL the endpoint already has is not resolved again), no or an unknown event type, a `rate_limit_per_second` that is not an integer from 1 to 1000 (or null)' },
        503: { description: 'The new URL\'s host could not be resolved within WEBHOOK_DNS_TIMEOUT (at most WEBHOOK_TIMEOUT), or its name servers failed for now (e.g. ESERVFAIL), or another update moved the endpoint meanwhile: nothing changed, the Idempotency-Key is free for a retry (Retry-After)' },
      },
      // A new URL is checked as the create checks it, before the share's place and the transaction, bounded (see the create).
      // Only a new one: the URL the endpoint already has (a client sending back the whole endpoint) is not
      // resolved again, so a host whose DNS fails now does not keep its admin from changing anything else
      // (each delivery checks the addresses it connects to anyway, ssrf.ts). A short read says which (a place of its own, given back before the DNS).
      prepare: async ({ body, params, principal, read }): Promise<UrlCheck> => {
        if (body.url === undefined) return { checked: false };
        const [row] = await read((tx) => tx.execute<{ url: string }[]>(`select url from webhook_endpoints where tenant_id = ? and id = ?`, [principal.tenantId, params.id]));
        // No such endpoint: nothing to resolve for, the handler answers 404.
        if (!row || row.url === body.url) return { checked: false };
        return { checked: true, refusal: await resolvedRefusal(body.url, deps.policy, deps.resolver) };
      },
      async handler({ req, em, principal, params, body, prepared, afterCommit }) {
        const check = prepared as UrlCheck;
        if (check.refusal) throw new ValidationError('Invalid request body', [{ path: 'url', message: check.refusal }], 422);
        // The row lock, as rotate and disable take it: concurrent updates take turns (the audit line's
        // previous URL is the one this update replaced), and NO KEY UPDATE neither waits for nor blocks
        // a run end inserting a delivery for the endpoint (its foreign key's KEY SHARE).
        const current = await endpointById(em, principal.tenantId, params.id, LOCK_ROW);
        // Another update moved the endpoint between the read above and the lock: the URL sent is a change
        // now, and was not checked. Nothing is changed; a retry checks it (503 frees the Idempotency-Key).
        if (body.url !== undefined && body.url !== current.url && !check.checked) throw new ServiceUnavailableError('The endpoint was changed meanwhile; try again.', undefined, 1);
        const sets: string[] = [];
        const values: unknown[] = [];
        for (const [field, value] of Object.entries(body) as [keyof typeof endpointFields, unknown][]) {
          if (value === undefined) continue;
          const column = PATCH_COLUMNS[field];
          sets.push(`${field} = ?${column?.cast ?? ''}`);
          values.push(column?.value ? column.value(value as never) : value);
        }
        const urlChanged = body.url !== undefined && body.url !== current.url;
        // The failures of the receiver it replaces are not the new one's: a new URL starts healthy, as a
        // re-enabled endpoint does (WEBHOOK_DISABLE_AFTER counts from the new receiver's first failure).
        if (urlChanged) sets.push('failing_since = null');
        const [row] = await em.execute<EndpointRow[]>(
          `update webhook_endpoints set ${sets.join(', ')}, updated_at = now() where tenant_id = ? and id = ? returning ${ENDPOINT_COLUMNS}`,
          [...values, principal.tenantId, params.id],
        );
        const view = toView(row!);
        // An audit line, as for a rotation: where the endpoint's events go is a security decision. Origins only (a query may carry a token).
        if (urlChanged) {
          afterCommit(async () =>
            req.log.info(
              { security_event: 'webhook_endpoint_url_changed', tenant_id: principal.tenantId, webhook_endpoint_id: view.id, changed_by: principal.sub, previous_url_origin: urlOrigin(current.url), url_origin: urlOrigin(view.url) },
              'webhook endpoint URL changed',
            ),
          );
        }
        // A new limit (raised, lowered or removed) applies to the deliveries already waiting for a turn too:
        // they are recalled to take one under it, rather than wait out the turns the old one spaced.
        const rates = deps.rates;
        if (rates && body.rate_limit_per_second !== undefined) afterCommit(async () => recallWaiting(rates.limits, rates.queue(), view.id, req.log));
        return { status: 200, body: view };
      },
    }),
    defineRoute({
      method: 'delete',
      path: `${WEBHOOK_ENDPOINTS_PATH}/:id`,
      summary: 'Delete a webhook endpoint (role admin) and its deliveries, pending ones included: no further attempt is made to it',
      tags: TAGS,
      roles: [ADMIN_ROLE],
      idempotency: 'optional',
      params: idParam,
      responses: {
        204: { description: 'Deleted, with its deliveries (a replay of its Idempotency-Key answers 204 again)' },
        ...adminOnly,
        404: { description: 'No such endpoint for this tenant (or already deleted)' },
        422: { description: 'A body was sent: this operation takes none' },
      },
      async handler({ req, em, principal, params, afterCommit }) {
        // A hard delete (ADR 0013, *Updating and deleting an endpoint*): its deliveries go with it (the
        // foreign key cascades). The delete's row lock (FOR UPDATE) waits for a run end that inserted a
        // delivery for it and has not committed (KEY SHARE), then takes that delivery too; a run end that
        // comes after the lock waits for the commit and finds no endpoint (the outbox locks the endpoints
        // it inserts for, outbox.ts). A delivery job finds nothing and completes.
        // First, the tenant's bulk-delete lock (shared: deletes do not wait for each other), which a retention batch
        // takes before any delivery row: the two never hold rows the other waits for (retention.ts; one message with the delete).
        await em.execute(`${DEFER_UNTIL_NEXT}select pg_advisory_xact_lock_shared(${deliveriesLockKey('?::uuid')})`, [principal.tenantId]);
        const [row] = await em.execute<{ id: string; url: string }[]>(`delete from webhook_endpoints where tenant_id = ? and id = ? returning id, url`, [principal.tenantId, params.id]);
        if (!row) throw new NotFoundError('webhook endpoint');
        // Its deliveries waiting for a rate turn end now (nothing to deliver), and its rate keys go, rather than both lingering until the last turn.
        const rates = deps.rates;
        if (rates) afterCommit(async () => recallWaiting(rates.limits, rates.queue(), row.id, req.log, true));
        afterCommit(async () =>
          req.log.info({ security_event: 'webhook_endpoint_deleted', tenant_id: principal.tenantId, webhook_endpoint_id: row.id, deleted_by: principal.sub, url_origin: urlOrigin(row.url) }, 'webhook endpoint deleted'),
        );
        return { status: 204 };
      },
    }),
    defineRoute({
      method: 'post',
      path: `${WEBHOOK_ENDPOINTS_PATH}/:id/rotate-secret`,
      summary: 'Rotate the signing secret of a webhook endpoint (role admin): the new secret is in this answer only; the current one keeps signing beside it until it expires',
      tags: TAGS,
      roles: [ADMIN_ROLE],
      // Required, as for the create: the answer is the only copy of the new secret. A retry without a key
      // would rotate again, and push the secret the receiver still holds out of the overlap.
      idempotency: 'required',
      params: idParam,
      body: rotateBody,
      responses: {
        200: { description: 'The endpoint, with its new signing secret (Cache-Control: no-store); `previous_secret_expires_at` says until when the replaced one still signs', schema: rotatedView, headers: SECRET_ANSWER_HEADERS },
        ...adminOnly,
        404: { description: 'No such endpoint for this tenant' },
        422: { description: 'Invalid body: `previous_secret_expires_in_seconds` not an integer from 0 to 604800 (7 days), or an unknown field' },
      },
      async handler({ req, em, principal, params, body, afterCommit }) {
        // The row lock makes concurrent rotations take turns (each moves the secret the one before it
        // left). NO KEY UPDATE, the lock the update takes anyway: a run's end inserting a delivery for
        // this endpoint holds KEY SHARE on it (the foreign key) until it commits, and must neither wait
        // for a rotation nor make one wait. A disabled endpoint is rotated too: after a leak, disable
        // it, rotate, give the receiver the new secret, and only then let it sign again.
        await endpointById(em, principal.tenantId, params.id, LOCK_ROW);
        const overlap = body?.previous_secret_expires_in_seconds ?? PREVIOUS_SECRET_DEFAULT_SECONDS;
        const secret = newSigningSecret();
        // The secret in use becomes the previous one, replacing any previous still live (a receiver holds
        // one or two secrets, never three); SET reads the row as it was, so `secret` here is the old one.
        const [row] = await em.execute<EndpointRow[]>(
          `update webhook_endpoints
              set previous_secret = case when ?::int > 0 then secret end,
                  previous_secret_expires_at = case when ?::int > 0 then date_trunc('milliseconds', now()) + ?::int * interval '1 second' end,
                  secret = ?, updated_at = now()
            where tenant_id = ? and id = ?
           returning ${ENDPOINT_COLUMNS}`,
          [overlap, overlap, overlap, secret, principal.tenantId, params.id],
        );
        const view = toView(row!);
        // An audit line (never a secret): who rotated which endpoint's secret, and until when the old one still signs.
        afterCommit(async () =>
          req.log.info({ security_event: 'webhook_secret_rotated', tenant_id: principal.tenantId, webhook_endpoint_id: view.id, rotated_by: principal.sub, previous_secret_expires_at: view.previous_secret_expires_at }, 'webhook signing secret rotated'),
        );
        return { status: 200, body: { ...view, secret }, headers: SECRET_ANSWER_HEADERS };
      },
    }),
    defineRoute({
      method: 'post',
      path: `${WEBHOOK_ENDPOINTS_PATH}/:id/disable`,
      summary: 'Disable a webhook endpoint (role admin): no new event is queued for it, its pending deliveries are given up',
      tags: TAGS,
      roles: [ADMIN_ROLE],
      idempotency: 'optional',
      params: idParam,
      responses: { 200: { description: 'The endpoint, disabled (disabling it again changes nothing)', schema: endpointView }, ...adminOnly, 404: { description: 'No such endpoint for this tenant' } },
      async handler({ req, em, principal, params, afterCommit }) {
        await endpointById(em, principal.tenantId, params.id, LOCK_ROW);
        const [row] = await em.execute<EndpointRow[]>(
          `update webhook_endpoints set enabled = false, disabled_at = coalesce(disabled_at, now()), disabled_reason = coalesce(disabled_reason, 'manual'), updated_at = now()
            where tenant_id = ? and id = ? returning ${ENDPOINT_COLUMNS}`,
          [principal.tenantId, params.id],
        );
        // Its deliveries waiting for a rate turn are given up now (as its pending ones are, at their attempt), and its rate keys go,
        // rather than both lingering until the last turn. Again at a second disable: a recall the first one missed is made up.
        const rates = deps.rates;
        if (rates) afterCommit(async () => recallWaiting(rates.limits, rates.queue(), params.id, req.log, true));
        return { status: 200, body: toView(row!) };
      },
    }),
    defineRoute({
      method: 'post',
      path: `${WEBHOOK_ENDPOINTS_PATH}/:id/enable`,
      summary: 'Re-enable a webhook endpoint (role admin), disabled by an admin or for failing: it receives new events again; deliveries given up meanwhile are not re-sent',
      tags: TAGS,
      roles: [ADMIN_ROLE],
      idempotency: 'optional',
      params: idParam,
      responses: {
        200: { description: 'The endpoint, enabled, its failing_since and disabled_reason cleared (enabling an enabled one changes nothing)', schema: endpointView },
        ...adminOnly,
        404: { description: 'No such endpoint for this tenant' },
        409: { description: 'The tenant already has WEBHOOK_MAX_ENDPOINTS enabled endpoints (`webhook_endpoint_limit`): disable or delete one first' },
      },
      async handler({ em, principal, params }) {
        // The cap as for a create, under the same per-tenant lock: an enable and a create cannot both take the last place.
        await lockEnabledEndpoints(em, principal.tenantId);
        const current = await endpointById(em, principal.tenantId, params.id, LOCK_ROW);
        if (current.enabled) return { status: 200, body: toView(current) };
        const [row] = await em.execute<EndpointRow[]>(
          `update webhook_endpoints set enabled = true, disabled_at = null, disabled_reason = null, failing_since = null, updated_at = now()
            where tenant_id = ? and id = ? and ${UNDER_CAP} returning ${ENDPOINT_COLUMNS}`,
          [principal.tenantId, params.id, principal.tenantId, deps.maxEndpoints],
        );
        if (!row) throw limitReached(deps.maxEndpoints);
        return { status: 200, body: toView(row) };
      },
    }),
  ];
}

/** A delivery's columns as its view shows them (the list and detail, deliveries.routes.ts; a resend's answer). */
export const DELIVERY_COLUMNS = 'id, event_type, status, attempts, last_status_code, last_error, last_attempt_at, next_attempt_at, delivered_at, created_at, payload, resent_at, resends';
type DeliveryView = z.infer<typeof deliveryView>;

export function toDeliveryView(r: DeliveryRowView): DeliveryView {
  return {
    id: r.id,
    event_type: r.event_type as DeliveryView['event_type'],
    status: r.status as DeliveryView['status'],
    attempts: r.attempts,
    last_status_code: r.last_status_code,
    last_error: r.last_error,
    last_attempt_at: toIsoTimeOrNull(r.last_attempt_at),
    next_attempt_at: toIsoTimeOrNull(r.next_attempt_at),
    delivered_at: toIsoTimeOrNull(r.delivered_at),
    created_at: toIsoTime(r.created_at),
    payload: r.payload as DeliveryView['payload'],
    resent_at: toIsoTimeOrNull(r.resent_at),
    resends: r.resends,
  };
}

export interface DeliveryRowView {
  id: string;
  event_type: string;
  status: string;
  attempts: number;
  last_status_code: number | null;
  last_error: string | null;
  last_attempt_at: Date | null;
  next_attempt_at: Date | null;
  delivered_at: Date | null;
  created_at: Date;
  payload: unknown;
  resent_at: Date | null;
  resends: number;
}
