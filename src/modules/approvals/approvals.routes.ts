import { z } from 'zod';
import { defineRoute, type RouteDef } from '../../platform/http/route.ts';
import { NotFoundError } from '../../platform/errors/app-error.ts';
import { nextCursor, pageLimit, pageWhere } from '../../platform/http/cursor.ts';
import type { ApprovalService } from './approval.service.ts';
import { APPROVAL_STATUSES, type ApprovalStatus } from './approval.entities.ts';
import { APPROVER_ROLE } from './approval.constants.ts';
import { approvalPage, approvalRequestView, BASE, DECISIONS, decisionResult, toApprovalView, type ApprovalPage, type ApprovalViewRow } from './approval.views.ts';

/**
 * A pending request whose SLA deadline has passed can no longer be decided (the decision's own check,
 * `sla_deadline <= now()`, and again by a statement's clock after its lock waits, approval.service.ts): it reads `expired`, from the database's clock, before
 * a worker's SLA timer records the expiry (which sets the same status and the same `decided_at`, the
 * deadline). The stored status is what the indexes hold; the filters below select by the status read.
 */
const OVERDUE = `(status = 'pending' and sla_deadline <= now())`;

const approvalColumns = `id, run_id, approval_class, required_approvals,
  case when ${OVERDUE} then 'expired' else status end as status, submitted_by, reasons, sla_deadline,
  case when ${OVERDUE} then sla_deadline else decided_at end as decided_at, created_at,
  coalesce((select json_agg(json_build_object('approver', d.approver, 'decision', d.decision, 'comment', d.comment, 'kind', d.kind, 'decided_at', d.created_at)
            order by d.created_at) from approval_decisions d where d.tenant_id = approval_requests.tenant_id and d.approval_request_id = approval_requests.id), '[]'::json) as decisions`;

type ListQuery = { status?: ApprovalStatus | undefined; cursor?: string | undefined; limit: number };

/**
 * A page of the tenant's requests of one stored status, newest first, `cond` on top; the values
 * appended to `params`. The status is a literal, one of APPROVAL_STATUSES: the list's indexes are
 * partial (pending, decided: approval.entities.ts), and a plan cached for the statement, made without
 * its parameters' values, proves its index's predicate all the same.
 */
function pageOf(params: unknown[], tenantId: string, query: ListQuery, status: ApprovalStatus, cond = ''): string {
  if (!APPROVAL_STATUSES.includes(status)) throw new Error(`not an approval status: ${status}`);
  params.push(tenantId);
  const where = pageWhere(`tenant_id = ? and status = '${status}'${cond}`, params, { cursor: query.cursor, limit: query.limit });
  return `select ${approvalColumns} from approval_requests where ${where} order by created_at desc, id desc limit ?`;
}

/**
 * The list statement, filtered by the status a request reads. Every branch bounds the stored status,
 * so each is a page read from its status's range of a partial index in index order, and the cursor is
 * the same (created_at, id) keyset: `pending` leaves the overdue out by a filter on the deadline;
 * `expired` is two ranges, the stored `expired` and the overdue `pending` (the tenant's pending
 * requests, filtered: its open work, never its history); no filter, one range per status. Ranges are
 * merged newest first (a merge of ordered branches, which reads each only as far as the page needs),
 * each cut at the page size (docs/api.md).
 */
function listStatement(tenantId: string, query: ListQuery): { sql: string; params: unknown[] } {
  const params: unknown[] = [];
  const pages =
    query.status === 'expired'
      ? [pageOf(params, tenantId, query, 'expired'), pageOf(params, tenantId, query, 'pending', ` and sla_deadline <= now()`)]
      : query.status === 'pending'
        ? [pageOf(params, tenantId, query, 'pending', ` and (sla_deadline is null or sla_deadline > now())`)]
        : (query.status ? [query.status] : APPROVAL_STATUSES).map((status) => pageOf(params, tenantId, query, status));
  if (pages.length === 1) return { sql: pages[0]!, params };
  params.push(query.limit + 1);
  return { sql: `select * from (${pages.map((p) => `(${p})`).join(' union all ')}) page order by created_at desc, id desc limit ?`, params };
}

export function approvalRoutes(deps: { approvals: ApprovalService }): RouteDef[] {
  return [
    defineRoute({
      method: 'get',
      path: `${BASE}/approvals`,
      summary: 'Approval requests of the tenant, newest first, with cursor pagination',
      tags: ['approvals'],
      query: z.strictObject({
        status: z.enum(APPROVAL_STATUSES).optional().describe('By the status a request reads: pending excludes, and expired includes, pending requests past their sla_deadline'),
        limit: pageLimit(50),
        cursor: z.string().max(200).optional(),
      }),
      responses: { 200: { description: 'A page of approval requests', schema: approvalPage } },
      async handler({ em, query, principal }) {
        const { sql, params } = listStatement(principal.tenantId, query);
        const rows = await em.execute<ApprovalViewRow[]>(sql, params);
        const page = rows.slice(0, query.limit);
        const body: ApprovalPage = { items: page.map(toApprovalView), next_cursor: nextCursor(page[page.length - 1], rows.length > query.limit) };
        return { status: 200, body };
      },
    }),
    defineRoute({
      method: 'get',
      path: `${BASE}/approvals/:id`,
      summary: 'One approval request with its decisions',
      tags: ['approvals'],
      params: z.object({ id: z.string().uuid() }),
      responses: { 200: { description: 'The approval request', schema: approvalRequestView }, 404: { description: 'Not found for this tenant' } },
      async handler({ em, params, principal }) {
        const [row] = await em.execute<ApprovalViewRow[]>(`select ${approvalColumns} from approval_requests where tenant_id = ? and id = ?`, [principal.tenantId, params.id]);
        if (!row) throw new NotFoundError('approval request');
        return { status: 200, body: toApprovalView(row) };
      },
    }),
    defineRoute({
      method: 'post',
      path: `${BASE}/approvals/:id/decision`,
      summary: 'Approve or reject (role approver; never the submitter; C needs two distinct approvers)',
      tags: ['approvals'],
      roles: [APPROVER_ROLE],
      idempotency: 'required',
      params: z.object({ id: z.string().uuid() }),
      body: z.strictObject({ decision: z.enum(DECISIONS), comment: z.string().max(2000).optional() }),
      responses: {
        200: { description: 'Decision recorded', schema: decisionResult },
        403: { description: 'Not an approver, or the submitter' },
        404: { description: 'No such approval request for this tenant' },
        409: { description: 'Already decided (approval_decided), expired (approval_expired), this approver already decided (approver_already_decided), withdrawn: its run was cancelled (run_not_active), its run was removed by run retention (run_deleted), or the workflow version of its run is retired for good (workflow_version_retired: the run cannot move on; cancel it, or its SLA deadline expires it)' },
        503: {
          description: "The run's workflow version is not registered on this instance, nor declared retired (a deploy in progress): the decision is not recorded; retry after Retry-After (code: workflow_version_unavailable)",
        },
      },
      async handler({ res, em, params, body, principal, afterCommit }) {
        const { result, afterCommit: resume } = await deps.approvals.decide(em, principal, params.id, body.decision, body.comment ?? null);
        res.locals.runId = result.run_id;
        afterCommit(resume);
        return { status: 200, body: result };
      },
    }),
  ];
}
