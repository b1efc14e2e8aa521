import { z } from 'zod';
import type { Queue } from 'bullmq';
import type { EntityManager } from '@mikro-orm/postgresql';
import type { Logger } from 'pino';
import { defineRoute, type RouteDef } from '../http/route.ts';
import { instantInput } from '../http/iso-time.ts';
import { ConflictError, NotFoundError } from '../errors/app-error.ts';
import { ADMIN_ROLE } from '../tenancy/roles.ts';
import { DEFER_UNTIL_NEXT } from '../db/markers.ts';
import { enqueueDeliveries } from './delivery.ts';
import { spendBudget, type ResendBudget } from './resend-budget.ts';
import { testPending, testsPendingBelow, WEBHOOK_TEST_MAX_PENDING } from './test-event.ts';
import { WEBHOOK_TEST_EVENT } from './webhook.entities.ts';
import { adminOnly, DELIVERY_COLUMNS, deliveryView, endpointById, LOCK_ROW, toDeliveryView, WEBHOOK_ENDPOINTS_PATH, type DeliveryRowView } from './webhook-endpoints.routes.ts';

/**
 * An admin's resend of webhook deliveries that settled (ADR 0013, *Resending*): one by id, or those of
 * an endpoint created in a time window (the "recover" of Svix). A resent delivery is the same event —
 * the same row, the same `webhook-id`, its attempt history kept — made `pending` again with one
 * attempt due now; that attempt is the only one it is owed (delivery.ts: a failure settles it `failed`
 * again, whatever WEBHOOK_MAX_ATTEMPTS).
 */

const TAGS = ['webhooks'];

/** At most this many deliveries per bulk resend request (its `limit`). */
export const BULK_RESEND_MAX = 1000;

/** The statuses a delivery may be resent from: settled ones (a pending one is still owed). */
const SETTLED = ['failed', 'delivered'] as const;

const deliveryParams = z.object({ id: z.uuid(), delivery_id: z.uuid() });
const endpointParams = z.object({ id: z.uuid() });

const bulkResendBody = z
  .strictObject({
    status: z
      .array(z.enum(SETTLED))
      .min(1)
      .max(SETTLED.length)
      .default(['failed'])
      .describe('The settled statuses to resend: `failed` (default) and/or `delivered` (for a receiver that lost what it had accepted)'),
    since: instantInput().describe('Only deliveries created (the event queued) at or after this instant (ISO 8601)'),
    until: instantInput().optional().describe('Only deliveries created strictly before this instant (ISO 8601); default: no upper bound'),
    limit: z.number().int().min(1).max(BULK_RESEND_MAX).default(BULK_RESEND_MAX).describe(`At most this many deliveries are resent by the request (1–${BULK_RESEND_MAX}, default ${BULK_RESEND_MAX}); has_more says whether more matched`),
  })
  .refine((b) => !b.until || Date.parse(b.until) > Date.parse(b.since), { path: ['until'], message: 'must be after since' });

const bulkResendResult = z
  .strictObject({
    resent: z.number().int().describe('How many deliveries this request made pending again, oldest first (test events are never among them): at most `limit`, at most what WEBHOOK_RESEND_MAX_PENDING leaves the tenant, and at most what is left of its WEBHOOK_RESEND_MAX_PER_HOUR'),
    has_more: z.boolean().describe('Whether deliveries matching the filter are left (past the limit): send the request again, with a new Idempotency-Key, until it is false'),
  })
  .meta({ id: 'WebhookBulkResendResult' });

const disabled = () => new ConflictError('webhook_endpoint_disabled', 'The webhook endpoint is disabled: enable it first (POST …/enable), then resend.');

/**
 * The endpoint, refused when disabled: a resend to it would be given up unsent at its attempt. Not
 * locked: a disable that commits just after the resend gives the resent deliveries up at their attempt,
 * as it gives up every pending one, and a lock would change no outcome — the disable would wait for the
 * resend's commit and then give them up all the same. (A lock would not risk a deadlock either: the
 * worker too locks the endpoint before the delivery, delivery.ts.)
 */
async function enabledEndpoint(em: EntityManager, tenantId: string, id: string, lock = ''): Promise<void> {
  if (!(await endpointById(em, tenantId, id, lock)).enabled) throw disabled();
}

const backlog = (max: number) =>
  new ConflictError(
    'webhook_resend_backlog',
    `The tenant already has ${max} resent webhook deliveries pending (WEBHOOK_RESEND_MAX_PENDING): wait for them to be attempted (GET …/deliveries?status=pending), then resend.`,
  );

/**
 * How many more deliveries the tenant may resend now: WEBHOOK_RESEND_MAX_PENDING less its deliveries
 * pending from a resend (`resends > 0`: a row is pending again only by a resend; counted up to the bound,
 * on the partial index webhook_deliveries_pending_resent_index). Every worker serves one webhook queue in
 * arrival order: unbounded, one tenant's bulk resends (1,000 jobs each, any number of requests) queued
 * ahead of every other tenant's fresh deliveries, and parked ones cycled through it. Under a per-tenant
 * advisory lock held to the commit (it travels with the count, one message), so concurrent resends cannot
 * each see the same room. Taken before any row lock of the request (an endpoint's, a delivery's); nothing
 * else takes it, so no lock order the other way round.
 */
async function resendRoom(em: EntityManager, tenantId: string, max: number): Promise<number> {
  await em.execute(`${DEFER_UNTIL_NEXT}select pg_advisory_xact_lock(hashtextextended('dealix:webhook_resend:' || ?, 0))`, [tenantId]);
  const [row] = await em.execute<{ n: number }[]>(
    `select count(*)::int as n from (select 1 from webhook_deliveries where tenant_id = ? and status = 'pending' and resends > 0 limit ?) t`,
    [tenantId, max],
  );
  const room = max - row!.n;
  if (room <= 0) throw backlog(max);
  return room;
}

const rateLimited = {
  description:
    'The tenant has resent WEBHOOK_RESEND_MAX_PER_HOUR deliveries in the last hour (`webhook_resend_rate_limited`): nothing is resent; retry after Retry-After (with a new Idempotency-Key or the same: a 429 is not stored)',
};

/** The SET of a resend: pending again with one attempt due now; the history (attempts, attempt_log, last answer) is kept. */
const RESEND_SET = `status = 'pending', next_attempt_at = now(), delivered_at = null, resent_at = now(), resends = resends + 1, updated_at = now()`;

/**
 * A delivery a request resent: its id and its count of resends, which name its job (`wh-<id>-r<resends>`,
 * job-ids.ts). The jobs are added after the commit in one addBulk; each resend's job has its own id,
 * because the job of the delivery's earlier cycle may still be `active` — it settled the row and has
 * yet to complete — or kept finished by BullMQ: under the same id the add was a no-op, and the resent
 * delivery waited for that job to end and then for the redelivery pass (which skips a delivery whose
 * job exists). Nothing is looked up or removed first, so no Redis round trip per delivery either.
 */
type ResentRow = { id: string; resends: number };

/** The resend routes (role admin, Idempotency-Key required), spread beside the endpoint routes. */
export function webhookResendRoutes(deps: {
  queue: () => Queue;
  /** WEBHOOK_RESEND_MAX_PENDING: deliveries a tenant may have pending from resends (resendRoom). */
  maxPendingResent: number;
  /** WEBHOOK_RESEND_MAX_PER_HOUR (spendBudget); none: no hourly budget. */
  budget?: ResendBudget;
  /** Counts the deliveries a resend made pending (dealix_webhook_deliveries_resent_total), after its commit. */
  onResent?: (mode: 'single' | 'bulk', count: number) => void;
}): RouteDef[] {
  const afterResend = (ctx: { req: { log: Logger }; principal: { tenantId: string; sub: string } }, endpointId: string, resent: ResentRow[], mode: 'single' | 'bulk') => async () => {
    // An audit line: who made the platform send which endpoint's events again.
    ctx.req.log.info({ tenant_id: ctx.principal.tenantId, webhook_endpoint_id: endpointId, resent: resent.length, resent_by: ctx.principal.sub, mode }, 'webhook deliveries resent');
    deps.onResent?.(mode, resent.length);
    if (resent.length) await enqueueDeliveries(deps.queue(), ctx.principal.tenantId, resent);
  };
  return [
    defineRoute({
      method: 'post',
      path: `${WEBHOOK_ENDPOINTS_PATH}/:id/deliveries/:delivery_id/resend`,
      summary: 'Resend a delivery that was given up or delivered (role admin): the same event and webhook-id, one attempt now',
      tags: TAGS,
      roles: [ADMIN_ROLE],
      // Required: a keyless retry of a resend whose attempt already settled would send the event once more.
      idempotency: 'required',
      params: deliveryParams,
      responses: {
        202: { description: 'The delivery, pending again with its attempt due now; its attempt history kept', schema: deliveryView },
        ...adminOnly,
        404: { description: 'No such endpoint for this tenant, or no such delivery of it' },
        409: { description: 'The delivery is still pending (`webhook_delivery_pending`: it is already owed an attempt), the tenant already has WEBHOOK_RESEND_MAX_PENDING resent deliveries pending (`webhook_resend_backlog`: wait for them), the endpoint is disabled (`webhook_endpoint_disabled`: enable it first), or it is a test event (`webhook.test`) and another test event of the endpoint is pending (`webhook_test_pending`, as for POST …/:id/test)' },
        429: rateLimited,
      },
      async handler(ctx) {
        const { em, principal, params, afterCommit } = ctx;
        // A test event resent is a test event pending again: it is held to the test route's bound (one pending per
        // endpoint, test-event.ts), under the same lock — the endpoint's row, NO KEY UPDATE — so a test and a resend
        // of one (or two resends) take turns and cannot both see room. Other events leave the endpoint unlocked
        // (enabledEndpoint). The event type never changes, so it is read unlocked first to choose.
        const [found] = await em.execute<{ event_type: string }[]>(`select event_type from webhook_deliveries where tenant_id = ? and endpoint_id = ? and id = ?`, [principal.tenantId, params.id, params.delivery_id]);
        // No such delivery: 404 (the endpoint's own 404 when there is no such endpoint either) before any 409 —
        // a disabled endpoint's or the backlog's would be stored under the key, and replayed by a retry with
        // it after the endpoint is enabled or the backlog drained, for a delivery that never existed. A
        // delivery found names an endpoint that exists (its foreign key); its checks come below, in lock order.
        if (!found) {
          await endpointById(em, principal.tenantId, params.id);
          throw new NotFoundError('webhook delivery');
        }
        const isTest = found.event_type === WEBHOOK_TEST_EVENT;
        await resendRoom(em, principal.tenantId, deps.maxPendingResent);
        await enabledEndpoint(em, principal.tenantId, params.id, isTest ? LOCK_ROW : '');
        // One from the hourly budget; given back by the rollback if the update resends nothing (a 409 below).
        await spendBudget(deps.budget, ctx, 1);
        const [row] = await em.execute<DeliveryRowView[]>(
          `update webhook_deliveries w set ${RESEND_SET}
            where w.tenant_id = ? and w.endpoint_id = ? and w.id = ? and w.status <> 'pending'${isTest ? ` and ${testsPendingBelow('w.tenant_id', 'w.endpoint_id')}` : ''}
            returning ${DELIVERY_COLUMNS}`,
          [principal.tenantId, params.id, params.delivery_id, ...(isTest ? [WEBHOOK_TEST_MAX_PENDING] : [])],
        );
        if (!row) {
          const [now] = await em.execute<{ status: string }[]>(`select status from webhook_deliveries where tenant_id = ? and endpoint_id = ? and id = ?`, [principal.tenantId, params.id, params.delivery_id]);
          // Deleted meanwhile (the retention pass): no such delivery now.
          if (!now) throw new NotFoundError('webhook delivery');
          if (now.status === 'pending') throw new ConflictError('webhook_delivery_pending', 'The delivery is still pending: its next attempt is already owed (see next_attempt_at).');
          throw testPending();
        }
        afterCommit(afterResend(ctx, params.id, [{ id: row.id, resends: row.resends }], 'single'));
        return { status: 202, body: toDeliveryView(row) };
      },
    }),
    defineRoute({
      method: 'post',
      path: `${WEBHOOK_ENDPOINTS_PATH}/:id/deliveries/resend`,
      summary: "Resend an endpoint's settled deliveries created in a time window (role admin), oldest first, up to a limit: recovery after its receiver was down. Test events (`webhook.test`) are left out",
      tags: TAGS,
      roles: [ADMIN_ROLE],
      idempotency: 'required',
      params: endpointParams,
      body: bulkResendBody,
      responses: {
        202: { description: 'How many deliveries were made pending again, and whether more match', schema: bulkResendResult },
        ...adminOnly,
        404: { description: 'No such endpoint for this tenant' },
        409: { description: 'The endpoint is disabled (`webhook_endpoint_disabled`): enable it first; or the tenant already has WEBHOOK_RESEND_MAX_PENDING resent deliveries pending (`webhook_resend_backlog`): wait for them, nothing is resent' },
        422: { description: 'Invalid body: no `since`, a time not ISO 8601 with an offset, `until` not after `since`, a status other than failed or delivered, a limit out of 1–1000, or an unknown field' },
        429: rateLimited,
      },
      async handler(ctx) {
        const { em, principal, params, body, afterCommit } = ctx;
        // At most what is left under the tenant's bound: has_more reports the rest.
        const room = await resendRoom(em, principal.tenantId, deps.maxPendingResent);
        await enabledEndpoint(em, principal.tenantId, params.id);
        // The statuses as literals, not a parameter (they are the schema's enum members): the planner proves
        // the partial index webhook_deliveries_failed_index's predicate from them (a prepared statement's
        // generic plan could not from a parameter), so `failed` reads the endpoint's failed deliveries only,
        // not every delivered one of the window.
        const statuses = [...new Set(body.status)].map((s) => `'${s}'`).join(', ');
        // Test events are left out (as Svix's recover, which recovers real events): a test answered what it
        // asked when it was sent, and resent in bulk it would pass the one-pending-test bound a single resend
        // keeps (test-event.ts). In the filter, so the limit and has_more count real events only. A filter on the
        // heap rows the index reads: test events are few, and nearly none are in a recover's window.
        const filter = `tenant_id = ? and endpoint_id = ? and status in (${statuses}) and event_type <> '${WEBHOOK_TEST_EVENT}' and created_at >= ?::timestamptz and (?::timestamptz is null or created_at < ?::timestamptz)`;
        const filterParams = [principal.tenantId, params.id, body.since, body.until ?? null, body.until ?? null];
        // At most what is left of the tenant's hourly budget too (429 when none is); what is not resent is given back below.
        const want = Math.min(body.limit, room);
        const spent = await spendBudget(deps.budget, ctx, want);
        // Oldest first along the (tenant, endpoint, created_at, id) order of the indexes, locked so no other
        // transaction resends them too. SKIP LOCKED: a row another transaction holds — a concurrent bulk resend
        // (which resends it), the retention pass (which deletes it, in its own order: waiting could deadlock) —
        // is passed over, not waited for; one still matching afterwards is reported by has_more.
        const rows = await em.execute<ResentRow[]>(
          `with picked as (select id from webhook_deliveries where ${filter} order by created_at, id limit ? for update skip locked)
           update webhook_deliveries d set ${RESEND_SET} where d.tenant_id = ? and d.id = any (array(select id from picked)) returning d.id, d.resends`,
          [...filterParams, spent?.granted ?? want, principal.tenantId],
        );
        await spent?.keep(rows.length);
        // Those resent are pending now and match no more: whatever still matches is past the limit.
        const left = await em.execute<unknown[]>(`select 1 from webhook_deliveries where ${filter} limit 1`, filterParams);
        afterCommit(afterResend(ctx, params.id, rows, 'bulk'));
        return { status: 202, body: { resent: rows.length, has_more: left.length > 0 } };
      },
    }),
  ];
}
