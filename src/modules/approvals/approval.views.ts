import { z } from 'zod';
import { pageSchema } from '../../platform/http/cursor.ts';
import { isoTime, toIsoTime, toIsoTimeOrNull } from '../../platform/http/iso-time.ts';
import { APPROVAL_STATUSES } from './approval.entities.ts';

/**
 * The bodies the approval routes answer, as the OpenAPI document publishes them; the functions that
 * build them return these schemas' types (see golden-path.views.ts).
 */
export const BASE = '/api/v1';

export const DECISIONS = ['approve', 'reject'] as const;
const APPROVAL_CLASSES = ['A', 'B', 'C'] as const;

const decisionView = z.strictObject({
  approver: z.string(),
  decision: z.enum(DECISIONS),
  comment: z.string().nullable(),
  kind: z.enum(['human', 'system']).describe('system: class A, approved by policy'),
  decided_at: isoTime,
});

export const approvalRequestView = z
  .strictObject({
    id: z.uuid(),
    run_id: z.uuid(),
    approval_class: z.enum(APPROVAL_CLASSES),
    required_approvals: z.number().int().min(0),
    status: z
      .enum(APPROVAL_STATUSES)
      .describe(
        'pending: can be decided. expired: past sla_deadline (read so from the deadline on, before a worker records it). withdrawn: its run was cancelled while it was pending. approved, rejected: decided',
      ),
    submitted_by: z.string(),
    reasons: z.array(z.string()),
    sla_deadline: isoTime.nullable(),
    decided_at: isoTime.nullable().describe('When it stopped being pending: the final decision, the SLA deadline (expired), or the cancel of its run (withdrawn); null while pending'),
    created_at: isoTime,
    decisions: z.array(decisionView),
    approval_request_id: z.uuid().describe('The same as id'),
    links: z.strictObject({ self: z.string(), decision: z.string(), run: z.string() }),
  })
  .meta({ id: 'ApprovalRequest' });
export type ApprovalRequestView = z.infer<typeof approvalRequestView>;

export const approvalPage = pageSchema(approvalRequestView).meta({ id: 'ApprovalRequestPage' });
export type ApprovalPage = z.infer<typeof approvalPage>;

export const decisionResult = z
  .strictObject({
    approval_request_id: z.uuid(),
    run_id: z.uuid(),
    status: z.enum(['pending', 'approved', 'rejected']).describe('pending while a class C request still needs its second approver'),
    approvals: z.number().int().min(0),
    required_approvals: z.number().int().min(0),
  })
  .meta({ id: 'ApprovalDecisionResult' });
export type DecisionResult = z.infer<typeof decisionResult>;

/** The columns the approval views read (approvals.routes.ts); `decisions` is json_agg's, its times in PostgreSQL's text form. */
export interface ApprovalViewRow {
  id: string;
  run_id: string;
  approval_class: (typeof APPROVAL_CLASSES)[number];
  required_approvals: number;
  status: (typeof APPROVAL_STATUSES)[number];
  submitted_by: string;
  reasons: string[];
  sla_deadline: Date | null;
  decided_at: Date | null;
  created_at: Date;
  decisions: Array<Omit<z.infer<typeof decisionView>, 'decided_at'> & { decided_at: string }>;
}

export function toApprovalView(r: ApprovalViewRow): ApprovalRequestView {
  return {
    id: r.id,
    run_id: r.run_id,
    approval_class: r.approval_class,
    required_approvals: r.required_approvals,
    status: r.status,
    submitted_by: r.submitted_by,
    reasons: r.reasons,
    sla_deadline: toIsoTimeOrNull(r.sla_deadline),
    decided_at: toIsoTimeOrNull(r.decided_at),
    created_at: toIsoTime(r.created_at),
    // json_agg writes timestamps in PostgreSQL's own form (…852947+00:00): every time in the API is ISO 8601 with Z.
    decisions: r.decisions.map((d) => ({ approver: d.approver, decision: d.decision, comment: d.comment, kind: d.kind, decided_at: toIsoTime(d.decided_at) })),
    approval_request_id: r.id,
    links: { self: `${BASE}/approvals/${r.id}`, decision: `${BASE}/approvals/${r.id}/decision`, run: `${BASE}/golden-path/runs/${r.run_id}` },
  };
}
