import { z } from 'zod';
import { defineRoute, type RouteDef } from '../../platform/http/route.ts';
import { NotFoundError } from '../../platform/errors/app-error.ts';
import { nextCursor, pageWhere } from '../../platform/http/cursor.ts';
import type { ApprovalService } from './approval.service.ts';
import { APPROVAL_STATUSES } from './approval.entities.ts';
import { APPROVER_ROLE } from './approval.constants.ts';

const BASE = '/api/v1';

const approvalColumns = `id, run_id, approval_class, required_approvals, status, submitted_by, reasons, sla_deadline, decided_at, created_at,
  coalesce((select json_agg(json_build_object('approver', d.approver, 'decision', d.decision, 'comment', d.comment, 'kind', d.kind, 'decided_at', d.created_at)
            order by d.created_at) from approval_decisions d where d.tenant_id = approval_requests.tenant_id and d.approval_request_id = approval_requests.id), '[]'::json) as decisions`;

const iso = (v: Date | string | null) => (v === null ? null : new Date(v).toISOString());

function approvalView(r: any) {
  // json_agg writes timestamps in PostgreSQL's own form (…852947+00:00): every time in the API is ISO 8601 with Z.
  const decisions = (r.decisions as Array<{ decided_at: string }>).map((d) => ({ ...d, decided_at: iso(d.decided_at) }));
  return { ...r, decisions, sla_deadline: iso(r.sla_deadline), decided_at: iso(r.decided_at), created_at: iso(r.created_at), approval_request_id: r.id, links: { self: `${BASE}/approvals/${r.id}`, decision: `${BASE}/approvals/${r.id}/decision`, run: `${BASE}/golden-path/runs/${r.run_id}` } };
}

export function approvalRoutes(deps: { approvals: ApprovalService }): RouteDef[] {
  return [
    defineRoute({
      method: 'get',
      path: `${BASE}/approvals`,
      summary: 'Approval requests of the tenant, newest first, with cursor pagination',
      tags: ['approvals'],
      query: z.strictObject({
        status: z.enum(APPROVAL_STATUSES).optional(),
        limit: z.coerce.number().int().min(1).max(100).default(50),
        cursor: z.string().max(200).optional(),
      }),
      responses: { 200: { description: 'A page of approval requests' } },
      async handler({ em, query, principal }) {
        const params: unknown[] = [principal.tenantId];
        const where = pageWhere('tenant_id = ?', params, query);
        const rows = await em.execute<any[]>(`select ${approvalColumns} from approval_requests where ${where} order by created_at desc, id desc limit ?`, params);
        const page = rows.slice(0, query.limit);
        return { status: 200, body: { items: page.map(approvalView), next_cursor: nextCursor(page[page.length - 1], rows.length > query.limit) } };
      },
    }),
    defineRoute({
      method: 'get',
      path: `${BASE}/approvals/:id`,
      summary: 'One approval request with its decisions',
      tags: ['approvals'],
      params: z.object({ id: z.string().uuid() }),
      responses: { 200: { description: 'The approval request' }, 404: { description: 'Not found for this tenant' } },
      async handler({ em, params, principal }) {
        const [row] = await em.execute<any[]>(`select ${approvalColumns} from approval_requests where tenant_id = ? and id = ?`, [principal.tenantId, params.id]);
        if (!row) throw new NotFoundError('approval request');
        return { status: 200, body: approvalView(row) };
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
      body: z.strictObject({ decision: z.enum(['approve', 'reject']), comment: z.string().max(2000).optional() }),
      responses: {
        200: { description: 'Decision recorded' },
        403: { description: 'Not an approver, or the submitter' },
        404: { description: 'No such approval request for this tenant' },
        409: { description: 'Already decided, expired, or this approver already decided' },
      },
      async handler({ em, params, body, principal, afterCommit }) {
        const { result, afterCommit: resume } = await deps.approvals.decide(em, principal, params.id, body.decision, body.comment ?? null);
        if (resume) afterCommit(resume);
        return { status: 200, body: result };
      },
    }),
  ];
}
