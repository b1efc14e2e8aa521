import { z } from 'zod';
import { defineRoute, type RouteDef } from '../http/route.ts';
import { NotFoundError } from '../errors/app-error.ts';
import { nextCursor, pageLimit, pageSchema, pageWhere } from '../http/cursor.ts';
import { isoTime, queryInstantInput } from '../http/iso-time.ts';
import { ADMIN_ROLE } from '../tenancy/roles.ts';
import { DELIVERY_EVENT_TYPES, DELIVERY_STATUSES, type DeliveryStatus } from './webhook.entities.ts';
import { adminOnly, DELIVERY_COLUMNS, deliveryView, endpointById, idParam, toDeliveryView, WEBHOOK_ENDPOINTS_PATH, type DeliveryRowView } from './webhook-endpoints.routes.ts';

/**
 * Reading an endpoint's deliveries (role admin): the list, filtered as an admin looking for what to
 * resend (ADR 0013, *Resending*) or a receiver's developer debugging it needs — by status, event type
 * and creation time — and one delivery with its every attempt (Svix's message-attempt views).
 */

const TAGS = ['webhooks'];

/**
 * `status`, repeated (`?status=failed&status=pending`, the query parser's array) or a comma list
 * (`?status=failed,pending`), or both: a delivery in any of them (a status named twice counts once).
 */
const statusFilter = z
  .preprocess(
    (v) => (v === undefined ? v : [...new Set([v].flat().flatMap((s) => (typeof s === 'string' ? s.split(',') : [s])))]),
    z.array(z.enum(DELIVERY_STATUSES)).min(1).max(DELIVERY_STATUSES.length),
  )
  .optional()
  .describe('Only deliveries in one of these statuses: repeat the parameter or give a comma list (`failed,pending`)');

const instant = (what: string) => queryInstantInput().optional().describe(`Only deliveries created (the event queued) strictly ${what} this instant (ISO 8601)`);

const listQuery = z
  .strictObject({
    status: statusFilter,
    event_type: z.enum(DELIVERY_EVENT_TYPES).optional().describe('Only deliveries of this event type (`webhook.test` for test events)'),
    created_after: instant('after'),
    created_before: instant('before'),
    limit: pageLimit(20),
    cursor: z.string().max(200).optional().describe('`next_cursor` of the page before: a position in the list, so it reads on under any filter'),
  })
  .refine((q) => !q.created_after || !q.created_before || Date.parse(q.created_before) > Date.parse(q.created_after), { path: ['created_before'], message: 'must be after created_after' });
type ListQuery = z.infer<typeof listQuery>;

const deliveryPage = pageSchema(deliveryView).meta({ id: 'WebhookDeliveryPage' });
type DeliveryPage = z.infer<typeof deliveryPage>;

const attemptView = z.strictObject({
  at: isoTime.describe('When the attempt was recorded (its answer, or its failure)'),
  status_code: z.number().int().nullable().describe("The receiver's HTTP status; null when none came (a timeout, a refused connection, an address refused)"),
  error: z.string().nullable().describe('Why the attempt failed; null for a 2xx'),
  duration_ms: z.number().int().nullable().describe('How long the attempt took'),
});
const deliveryDetail = deliveryView
  .extend({ attempt_log: z.array(attemptView).describe('Every attempt, oldest first, resends included (`attempts` counts them)') })
  .meta({ id: 'WebhookDeliveryDetail' });
type DeliveryDetail = z.infer<typeof deliveryDetail>;

const deliveryParams = z.object({ id: z.uuid(), delivery_id: z.uuid() });

/**
 * The statement of a page. A status filter is one branch per status, each with the status as a literal
 * (validated against DELIVERY_STATUSES): `failed` is read through webhook_deliveries_failed_index and
 * `pending` through webhook_deliveries_endpoint_pending_index, never by walking the endpoint's history
 * (mostly delivered) through the main index and filtering row by row; several are merged in order.
 * The cursor is only a position, (created_at, id): as the runs list's, it reads on under any filter.
 */
function pageStatement(tenantId: string, endpointId: string, query: ListQuery): { sql: string; params: unknown[] } {
  const statuses: (DeliveryStatus | undefined)[] = query.status ?? [undefined];
  const params: unknown[] = [];
  const branches = statuses.map((status) => {
    let where = 'tenant_id = ? and endpoint_id = ?';
    params.push(tenantId, endpointId);
    if (status) where += ` and status = '${status}'`;
    if (query.event_type) {
      where += ' and event_type = ?';
      params.push(query.event_type);
    }
    if (query.created_after) {
      where += ' and created_at > ?::timestamptz';
      params.push(query.created_after);
    }
    if (query.created_before) {
      where += ' and created_at < ?::timestamptz';
      params.push(query.created_before);
    }
    return `select ${DELIVERY_COLUMNS} from webhook_deliveries where ${pageWhere(where, params, { cursor: query.cursor, limit: query.limit })} order by created_at desc, id desc limit ?`;
  });
  if (branches.length === 1) return { sql: branches[0]!, params };
  params.push(query.limit + 1);
  return { sql: `select * from (${branches.map((b) => `(${b})`).join(' union all ')}) d order by created_at desc, id desc limit ?`, params };
}

interface AttemptRow {
  at: string;
  status_code: number | null;
  error: string | null;
  duration_ms: number | null;
}

export function webhookDeliveryRoutes(): RouteDef[] {
  return [
    defineRoute({
      method: 'get',
      path: `${WEBHOOK_ENDPOINTS_PATH}/:id/deliveries`,
      summary: "An endpoint's deliveries (role admin), newest first, with cursor pagination, filtered by status, event type and creation time: status, attempts, last answer, next attempt",
      tags: TAGS,
      roles: [ADMIN_ROLE],
      params: idParam,
      query: listQuery,
      responses: { 200: { description: 'A page of deliveries', schema: deliveryPage }, ...adminOnly, 404: { description: 'No such endpoint for this tenant' } },
      async handler({ em, principal, params, query }) {
        await endpointById(em, principal.tenantId, params.id);
        const { sql, params: sqlParams } = pageStatement(principal.tenantId, params.id, query);
        const rows = await em.execute<DeliveryRowView[]>(sql, sqlParams);
        const page = rows.slice(0, query.limit);
        const body: DeliveryPage = { items: page.map(toDeliveryView), next_cursor: nextCursor(page[page.length - 1], rows.length > query.limit) };
        return { status: 200, body };
      },
    }),
    defineRoute({
      method: 'get',
      path: `${WEBHOOK_ENDPOINTS_PATH}/:id/deliveries/:delivery_id`,
      summary: 'A delivery of an endpoint (role admin): the message POSTed and every attempt — when, the status code, the error, how long',
      tags: TAGS,
      roles: [ADMIN_ROLE],
      params: deliveryParams,
      responses: { 200: { description: 'The delivery with its attempt history', schema: deliveryDetail }, ...adminOnly, 404: { description: 'No such delivery of this endpoint for this tenant' } },
      async handler({ em, principal, params }) {
        // The endpoint is part of the filter: a delivery of another endpoint (of the tenant) is not this one's.
        const [row] = await em.execute<(DeliveryRowView & { attempt_log: AttemptRow[] | null })[]>(
          `select ${DELIVERY_COLUMNS}, attempt_log from webhook_deliveries where tenant_id = ? and endpoint_id = ? and id = ?`,
          [principal.tenantId, params.id, params.delivery_id],
        );
        if (!row) throw new NotFoundError('webhook delivery');
        const attempts = (row.attempt_log ?? []).map((a) => ({ at: a.at, status_code: a.status_code, error: a.error, duration_ms: a.duration_ms }));
        const body: DeliveryDetail = { ...toDeliveryView(row), attempt_log: attempts };
        return { status: 200, body };
      },
    }),
  ];
}
