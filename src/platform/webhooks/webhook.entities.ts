import { defineEntity, p } from '@mikro-orm/core';
import { retentionClockTrigger, SYSTEM_ROLE, tenantIdProperty, tenantIsolationPolicy } from '../db/tenant-owned.ts';
import { PAST_RETENTION_FLOOR_SQL } from '../config/run-retention-floor.ts';

/** The events an endpoint may subscribe to (docs/api.md, *Webhooks*). */
export const WEBHOOK_EVENT_TYPES = ['run.completed', 'run.failed', 'run.cancelled', 'run.rejected', 'run.approval_expired', 'approval.requested', 'approval.decided', 'webhook_endpoint.disabled'] as const;
export type WebhookEventType = (typeof WEBHOOK_EVENT_TYPES)[number];
/**
 * An admin's test event (POST …/:id/test, ADR 0013): sent to the one endpoint named, never subscribed
 * to (it is not in WEBHOOK_EVENT_TYPES, so no endpoint lists it and no outbox insert matches it).
 */
export const WEBHOOK_TEST_EVENT = 'webhook.test';
/** The event types a delivery may carry: the subscribable ones and the test event. */
export const DELIVERY_EVENT_TYPES = [...WEBHOOK_EVENT_TYPES, WEBHOOK_TEST_EVENT] as const;

/** Why an endpoint is disabled: an admin's `POST …/disable`, or WEBHOOK_DISABLE_AFTER of failing deliveries (ADR 0013). */
export const DISABLED_REASONS = ['manual', 'failing'] as const;
export type DisabledReason = (typeof DISABLED_REASONS)[number];

/** An endpoint's `rate_limit_per_second`, when set: requests a second, over every worker (ADR 0013, *Rate limits*). */
export const WEBHOOK_RATE_LIMIT_MIN = 1;
export const WEBHOOK_RATE_LIMIT_MAX = 1000;

export const DELIVERY_STATUSES = ['pending', 'delivered', 'failed'] as const;
export type DeliveryStatus = (typeof DELIVERY_STATUSES)[number];
/** A delivery that will never be attempted again: run retention may delete it once old enough (ADR 0011, 0013). */
export const SETTLED_DELIVERY_STATUSES = ['delivered', 'failed'] as const satisfies readonly DeliveryStatus[];
/** The retention policy's predicate, written as PostgreSQL prints it back (the schema diff stays empty). */
export const SETTLED_DELIVERY_SQL = `(status = ANY (ARRAY[${SETTLED_DELIVERY_STATUSES.map((s) => `'${s}'::text`).join(', ')}]))`;

/**
 * A tenant's webhook endpoint: where its subscribed events are POSTed, signed with its secret
 * (Standard Webhooks, `whsec_<base64>`). The secret is shown once, in the create's (or a rotation's)
 * answer; the workers read it to sign (HMAC needs the key itself, so it cannot be stored hashed).
 */
export const WebhookEndpoint = defineEntity({
  name: 'WebhookEndpoint',
  tableName: 'webhook_endpoints',
  properties: {
    id: p.uuid().primary(),
    tenantId: tenantIdProperty(),
    url: p.string().length(2048),
    description: p.string().length(500).nullable(),
    events: p.array().columnType('text[]'),
    secret: p.string().length(100),
    /**
     * The secret a rotation replaced, still signing beside `secret` until `previousSecretExpiresAt`
     * (by the database's clock), so a receiver can switch without rejecting a delivery (ADR 0013).
     * Both null when there is none; an expired one is ignored, and dropped by the next rotation.
     */
    previousSecret: p.string().length(100).nullable(),
    previousSecretExpiresAt: p.datetime().nullable(),
    enabled: p.boolean(),
    createdBy: p.string().length(255),
    createdAt: p.datetime(),
    updatedAt: p.datetime(),
    disabledAt: p.datetime().nullable(),
    /** Why it is disabled (null while enabled). */
    disabledReason: p.enum(DISABLED_REASONS).nullable(),
    /**
     * The first failed attempt since its last 2xx (or its creation, or its re-enabling); null while
     * the last recorded attempt succeeded. A failed attempt WEBHOOK_DISABLE_AFTER past it disables the endpoint.
     */
    failingSince: p.datetime().nullable(),
    /**
     * At most this many requests a second to it, over every worker (ADR 0013, *Rate limits*); null: no
     * limit. A delivery without a turn waits for one, spending no attempt.
     */
    rateLimitPerSecond: p.integer().nullable(),
  },
  checks: [{ name: 'webhook_endpoints_rate_limit_per_second_check', expression: `rate_limit_per_second >= ${WEBHOOK_RATE_LIMIT_MIN} and rate_limit_per_second <= ${WEBHOOK_RATE_LIMIT_MAX}` }],
  // The target of the deliveries' (tenant_id, endpoint_id) foreign key: a delivery names its tenant's endpoint only.
  uniques: [{ name: 'webhook_endpoints_tenant_id_id_unique', properties: ['tenantId', 'id'] }],
  indexes: [{ name: 'webhook_endpoints_tenant_created_index', properties: ['tenantId', 'createdAt', 'id'] }],
  rowLevelSecurity: 'force',
  policies: [tenantIsolationPolicy('webhook_endpoints')],
});

/**
 * The transactional outbox (ADR 0013): one row per event and subscribed endpoint, inserted in the
 * transaction of the state change that causes the event; a worker POSTs it after the commit and
 * records each attempt here.
 */
export const WebhookDelivery = defineEntity({
  name: 'WebhookDelivery',
  tableName: 'webhook_deliveries',
  properties: {
    id: p.uuid().primary(),
    tenantId: tenantIdProperty(),
    endpoint: () => p.manyToOne(WebhookEndpoint).joinColumns('tenant_id', 'endpoint_id').referencedColumnNames('tenant_id', 'id').deleteRule('cascade'),
    eventType: p.string().length(64),
    /** What is POSTed: `{type, timestamp, data}` (Standard Webhooks). */
    payload: p.json<unknown>(),
    status: p.enum(DELIVERY_STATUSES),
    attempts: p.integer().default(0),
    /** When the next attempt is due (pending); null once delivered or failed. */
    nextAttemptAt: p.datetime().nullable(),
    lastAttemptAt: p.datetime().nullable(),
    lastStatusCode: p.integer().nullable(),
    lastError: p.string().length(500).nullable(),
    /** Every attempt's outcome, oldest first: `{at, status_code, error, duration_ms}`. */
    attemptLog: p.json<unknown>().nullable(),
    deliveredAt: p.datetime().nullable(),
    /**
     * An admin's last resend of it once settled (POST …/resend); while it is pending again, it is owed
     * exactly one attempt, whatever WEBHOOK_MAX_ATTEMPTS (ADR 0013).
     */
    resentAt: p.datetime().nullable(),
    /** How often an admin resent it. */
    resends: p.integer().default(0),
    createdAt: p.datetime(),
    updatedAt: p.datetime(),
  },
  uniques: [{ name: 'webhook_deliveries_tenant_id_id_unique', properties: ['tenantId', 'id'] }],
  indexes: [
    { name: 'webhook_deliveries_tenant_endpoint_created_index', properties: ['tenantId', 'endpoint', 'createdAt', 'id'] },
    // The bulk resend's default (`failed`, resend.ts): an endpoint's failed deliveries in creation order, without
    // walking its delivered ones (most of its history) as the index above would. Failed ones are few but kept.
    { name: 'webhook_deliveries_failed_index', properties: ['tenantId', 'endpoint', 'createdAt', 'id'], where: "status = 'failed'" },
    // The deliveries list filtered on `pending` (deliveries.routes.ts): an endpoint's owed deliveries, newest first,
    // without walking its settled history as the main index would; the redelivery pass's index below is cross-tenant.
    { name: 'webhook_deliveries_endpoint_pending_index', properties: ['tenantId', 'endpoint', 'createdAt', 'id'], where: "status = 'pending'" },
    // The deliveries list filtered on `event_type` (deliveries.routes.ts): an endpoint's deliveries of one type, newest
    // first. Without it the filter walked the endpoint's history within the window through the main index (or the
    // table), discarding every other type: a type an endpoint rarely gets (`webhook.test`, `run.failed`) read it all.
    // Not partial (the type is the route's parameter): one more entry per delivery inserted, in the run end's statement.
    { name: 'webhook_deliveries_endpoint_event_type_index', properties: ['tenantId', 'endpoint', 'eventType', 'createdAt', 'id'] },
    // The test event's bound (test-event.ts): an endpoint's pending test events, counted on every POST …/:id/test.
    // Without it the count read the endpoint's whole history (the index above) or every pending delivery of
    // the platform (the one below), filtering row by row. Nearly always empty, at most one row per endpoint.
    { name: 'webhook_deliveries_pending_test_index', properties: ['tenantId', 'endpoint'], where: `event_type = '${WEBHOOK_TEST_EVENT}' and status = 'pending'` },
    // The resend bound (resend.ts, WEBHOOK_RESEND_MAX_PENDING): a tenant's deliveries pending because an admin resent
    // them, counted on every resend. Without it the count filtered every pending delivery of the tenant row by row (a
    // receiver down makes a backlog of them). Partial: only deliveries resent and not yet settled again.
    { name: 'webhook_deliveries_pending_resent_index', properties: ['tenantId'], where: "status = 'pending' and resends > 0" },
    // The redelivery pass's cross-tenant read: pending deliveries overdue (their job lost with Redis).
    { name: 'webhook_deliveries_pending_index', properties: ['nextAttemptAt'], where: "status = 'pending'" },
    // Retention's cross-tenant delete (ADR 0011): settled deliveries by when they settled, oldest first.
    { name: 'webhook_deliveries_settled_index', properties: ['updatedAt'], where: "status in ('delivered', 'failed')" },
  ],
  rowLevelSecurity: 'force',
  policies: [
    tenantIsolationPolicy('webhook_deliveries'),
    // The redelivery pass (maintenance): as the NOLOGIN system role, only the columns granted to it
    // (ids, status, when due), never the payload. See ADR 0013.
    { name: 'webhook_deliveries_system_redelivery', command: 'select', roles: [SYSTEM_ROLE], using: 'true' },
    // Retention (ADR 0011, RUN_RETENTION): the same role may delete a settled delivery, never a pending
    // one (an event still owed to its receiver), and not before RUN_RETENTION_FLOOR_MS has passed since
    // it settled (its row's last move); how much longer is the job's condition. The floor is here because
    // the application role reaches this role: any of its statements could otherwise delete every tenant's
    // delivery history the moment each delivery settles (ADR 0011, amendment "A floor under retention").
    { name: 'webhook_deliveries_system_retention', command: 'delete', roles: [SYSTEM_ROLE], using: `(${SETTLED_DELIVERY_SQL} AND ${PAST_RETENTION_FLOOR_SQL})` },
  ],
  // That floor reads updated_at: the database's time of the delivery's last move (its settling), which the
  // application role cannot backdate (ADR 0011, amendment "The floor's clock is the database's").
  triggers: [retentionClockTrigger()],
});
