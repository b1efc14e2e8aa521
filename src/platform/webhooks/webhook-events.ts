import { z } from 'zod';
import { isoTime } from '../http/iso-time.ts';
import { DELIVERY_EVENT_TYPES } from './webhook.entities.ts';

/** `data` of `run.<status>`: the run that ended (docs/api.md, *Webhooks*). */
export const runEventData = z
  .strictObject({
    workflow: z.string(),
    run_id: z.string().uuid(),
    status: z.string().describe('The status the run ended with: completed, failed, cancelled, rejected, approval_expired'),
    correlation_id: z.string(),
    ended_at: isoTime,
    evidence_pack_id: z.string().uuid().optional().describe('The golden path: the evidence pack of a run that completed (or was rejected) with one'),
    evidence_sha256: z
      .string()
      .regex(/^[0-9a-f]{64}$/)
      .optional()
      .describe("With evidence_pack_id: the pack's SHA-256 (lower-case hex) as the run ended; keep it to verify the pack later without trusting the platform"),
  })
  .meta({ id: 'WebhookRunEventData' });

/** `data` of `approval.requested`: a run now waits for human approvers. */
export const approvalRequestedData = z
  .strictObject({
    approval_request_id: z.string().uuid(),
    run_id: z.string().uuid(),
    workflow: z.string(),
    correlation_id: z.string(),
    approval_class: z.enum(['B', 'C']),
    required_approvals: z.number().int().min(1),
    sla_deadline: isoTime.describe('Past it, the request expires and the run ends approval_expired'),
  })
  .meta({ id: 'WebhookApprovalRequestedData' });

/**
 * `data` of `approval.decided`: one human decision on an approval request (each of a class C request's
 * two approvals is one), with the request's status after it.
 */
export const approvalDecidedData = z
  .strictObject({
    approval_request_id: z.string().uuid(),
    run_id: z.string().uuid(),
    workflow: z.string(),
    correlation_id: z.string(),
    decision: z.enum(['approve', 'reject']),
    approver: z.string().describe('Who decided: the subject (`sub`) of the approver\'s token'),
    status: z.enum(['pending', 'approved', 'rejected']).describe('The request after this decision: pending while a class C request still needs its second approver, else approved or rejected'),
    approvals: z.number().int().min(0).describe('Approvals recorded on the request so far, this decision included if it approves'),
    required_approvals: z.number().int().min(1),
    decided_at: isoTime.describe('When the decision was recorded (its decided_at in the request\'s decisions)'),
  })
  .meta({ id: 'WebhookApprovalDecidedData' });

/** `data` of `webhook_endpoint.disabled`: another endpoint of the tenant was disabled for failing (sent to its other endpoints). */
export const endpointDisabledData = z
  .strictObject({
    endpoint_id: z.string().uuid(),
    url: z.string().describe("The disabled endpoint's origin (scheme, host, port), never its path or query, where a receiver's token often is: GET …/webhook-endpoints/:endpoint_id has it whole"),
    reason: z.enum(['failing']).describe('Why: its deliveries failed for WEBHOOK_DISABLE_AFTER with no 2xx'),
    failing_since: isoTime.describe('Its first failed attempt since its last 2xx'),
    disabled_at: isoTime,
  })
  .meta({ id: 'WebhookEndpointDisabledData' });

/** `data` of `webhook.test`: an admin's test event to the endpoint (POST …/:id/test); no run or approval is behind it. */
export const testEventData = z
  .strictObject({
    endpoint_id: z.string().uuid().describe('The endpoint tested (the one receiving it)'),
    message: z.string().describe('Says it is a test event: nothing happened'),
  })
  .meta({ id: 'WebhookTestEventData' });

/** What every webhook POSTs (Standard Webhooks): `{type, timestamp, data}`. */
export const webhookPayload = z
  .strictObject({
    type: z.enum(DELIVERY_EVENT_TYPES),
    timestamp: isoTime.describe("When the event happened (the transaction that caused it; approval.decided: the decision's decided_at)"),
    data: z.union([runEventData, approvalRequestedData, approvalDecidedData, endpointDisabledData, testEventData]),
  })
  .meta({ id: 'WebhookPayload' });
