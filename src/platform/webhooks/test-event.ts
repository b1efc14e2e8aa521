import type { Queue } from 'bullmq';
import type { Logger } from 'pino';
import { defineRoute, type RouteDef } from '../http/route.ts';
import { ConflictError } from '../errors/app-error.ts';
import { ADMIN_ROLE } from '../tenancy/roles.ts';
import { enqueueDeliveries } from './delivery.ts';
import { spendBudget, type ResendBudget } from './resend-budget.ts';
import { ISO_STATEMENT_TIME, STATEMENT_TIME } from './outbox.ts';
import { WEBHOOK_TEST_EVENT } from './webhook.entities.ts';
import { adminOnly, DELIVERY_COLUMNS, deliveryView, endpointById, idParam, LOCK_ROW, toDeliveryView, WEBHOOK_ENDPOINTS_PATH, type DeliveryRowView } from './webhook-endpoints.routes.ts';

/**
 * An admin's test event to one webhook endpoint (ADR 0013, *Test events*; Stripe's "Send test webhook",
 * Svix's "Send example"): a `webhook.test` delivery inserted into the outbox for that endpoint only,
 * whatever it subscribed to, so the client checks its receiver — reachable, TLS, the signature
 * verified with its secret — without submitting a run. Through the outbox like any event: signed,
 * recorded, listed with the endpoint's deliveries, under the in-flight caps, found again by the
 * redelivery pass if its job is lost; owed one attempt (delivery.ts treats it as a resend). Under the
 * endpoint's rate limit it takes the next turn, ahead of the deliveries waiting (rate-limit.ts,
 * takeFirst), and at an in-flight cap it is parked first (ADR 0013, *Test events go ahead of a backlog*).
 */

/**
 * At most this many test events of an endpoint pending at once: one. A test is owed one attempt, so it
 * settles within WEBHOOK_TIMEOUT once a webhook slot takes it; while one is pending the admin waits for
 * its outcome. It bounds what a tenant makes the platform POST by this route to one request in flight
 * per endpoint (at most WEBHOOK_MAX_ENDPOINTS per tenant), each for one API request of its admin.
 */
export const WEBHOOK_TEST_MAX_PENDING = 1;

/** What `data.message` says: the receiver's operator reads it in its logs. */
export const TEST_EVENT_MESSAGE = 'A test event sent by an admin of the tenant (POST /api/v1/webhook-endpoints/:id/test): nothing happened, no run is behind it.';

/**
 * The bound's condition: fewer than its parameter (WEBHOOK_TEST_MAX_PENDING) test events of the endpoint
 * pending, read through the partial index webhook_deliveries_pending_test_index. Shared by the test route
 * and the resend of a test event (resend.ts), which must hold the endpoint's row lock (LOCK_ROW) first, so
 * that concurrent tests and resends of one endpoint take turns and two cannot both see room.
 */
export const testsPendingBelow = (tenant: string, endpoint: string) =>
  `(select count(*) from webhook_deliveries d
     where d.tenant_id = ${tenant} and d.endpoint_id = ${endpoint} and d.event_type = '${WEBHOOK_TEST_EVENT}' and d.status = 'pending') < ?`;

/** The 409 past the bound, for a test sent or resent. */
export const testPending = () => new ConflictError('webhook_test_pending', 'A test event of this endpoint is still pending: see its outcome in GET …/deliveries before sending another.');

/**
 * Inserts the test delivery, unless WEBHOOK_TEST_MAX_PENDING of the endpoint's are pending (no row
 * then). The count and the insert are one statement, and the endpoint's row lock, taken before it,
 * makes concurrent tests of an endpoint take turns, so two cannot both see room under the bound.
 * The envelope is the outbox's (`{type, timestamp, data}`), never a secret; its time and `created_at` are
 * this statement's, after the endpoint's lock, as the outbox's (outbox.ts, STATEMENT_TIME).
 */
export const INSERT_TEST = `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, next_attempt_at, created_at, updated_at)
  select gen_random_uuid(), ?, e.id, '${WEBHOOK_TEST_EVENT}',
         jsonb_build_object('type', '${WEBHOOK_TEST_EVENT}', 'timestamp', ${ISO_STATEMENT_TIME}, 'data', jsonb_build_object('endpoint_id', e.id, 'message', ?::text)),
         'pending', 0, now(), date_trunc('milliseconds', ${STATEMENT_TIME}), now()
    from webhook_endpoints e
   where e.tenant_id = ? and e.id = ?
     and ${testsPendingBelow('e.tenant_id', 'e.id')}
  returning ${DELIVERY_COLUMNS}`;

/** The test event route (role admin, Idempotency-Key required), spread beside the endpoint routes. */
export function webhookTestEventRoutes(deps: {
  queue: () => Queue;
  /** Counts a test event sent (dealix_webhook_test_events_total), after its commit. */
  onSent?: () => void;
  /** WEBHOOK_RESEND_MAX_PER_HOUR, shared with the resends (spendBudget); none: no hourly budget. */
  budget?: ResendBudget;
}): RouteDef[] {
  return [
    defineRoute({
      method: 'post',
      path: `${WEBHOOK_ENDPOINTS_PATH}/:id/test`,
      summary: 'Send a test event (`webhook.test`) to a webhook endpoint (role admin), whatever it subscribed to: one attempt, signed and recorded as any delivery',
      tags: ['webhooks'],
      roles: [ADMIN_ROLE],
      // Required: a keyless retry (the answer lost) would send a second test event, as a keyless resend would.
      idempotency: 'required',
      params: idParam,
      responses: {
        202: { description: "The test delivery, pending, its attempt due now — on an endpoint with a rate_limit_per_second, at its next turn, ahead of the deliveries waiting for turns (and, at an in-flight cap, the first promoted); its id is the `webhook-id` the receiver gets. Its outcome: GET …/:id/deliveries", schema: deliveryView },
        ...adminOnly,
        404: { description: 'No such endpoint for this tenant' },
        409: { description: 'The endpoint is disabled (`webhook_endpoint_disabled`: enable it first), or a test event of it is still pending (`webhook_test_pending`: wait for its outcome)' },
        429: { description: 'The tenant has used its hourly budget of resends and test events (`webhook_resend_rate_limited`, WEBHOOK_RESEND_MAX_PER_HOUR); Retry-After says when one is free' },
      },
      async handler(ctx) {
        const { em, principal, params, afterCommit } = ctx;
        // NO KEY UPDATE, as rotate and disable: run ends inserting deliveries for the endpoint (KEY SHARE) neither wait nor are waited for.
        const endpoint = await endpointById(em, principal.tenantId, params.id, LOCK_ROW);
        // Its attempt would be given up unsent ('endpoint disabled'): a test that says nothing of the receiver.
        if (!endpoint.enabled) throw new ConflictError('webhook_endpoint_disabled', 'The webhook endpoint is disabled: enable it first (POST …/enable), then send the test event.');
        // One from the tenant's hourly budget of requested sends, as a resend spends (resend.ts): a test event is
        // a signed POST to a host the admin chose, and one pending per endpoint bounded only how many wait, not
        // how many go out as each settles. Given back by the rollback when none is inserted (the 409 below).
        await spendBudget(deps.budget, ctx, 1);
        const [row] = await em.execute<DeliveryRowView[]>(INSERT_TEST, [principal.tenantId, TEST_EVENT_MESSAGE, principal.tenantId, params.id, WEBHOOK_TEST_MAX_PENDING]);
        if (!row) throw testPending();
        afterCommit(async () => {
          const log: Logger = ctx.req.log;
          // An audit line: who made the platform POST to which endpoint.
          log.info({ tenant_id: principal.tenantId, webhook_endpoint_id: params.id, webhook_delivery_id: row.id, sent_by: principal.sub }, 'webhook test event sent');
          deps.onSent?.();
          // A lost enqueue is found by the redelivery pass: the delivery is committed.
          await enqueueDeliveries(deps.queue(), principal.tenantId, [row.id]).catch((err: unknown) => log.warn({ err, webhook_delivery_id: row.id }, 'webhook test event not enqueued; the redelivery pass will'));
        });
        return { status: 202, body: toDeliveryView(row) };
      },
    }),
  ];
}
