import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { defineStep } from '../../platform/durable/workflow.ts';
import { approvalPacketSchema, economicsSchema, submissionSchema, type ApprovalPacket } from '../golden-path/golden-path.schemas.ts';
import { paybackRatio } from '../golden-path/economics-model.step.ts';
import { provenance } from '../golden-path/provenance.ts';
import { ApprovalDecision, ApprovalRequest } from './approval.entities.ts';
import { appliedPolicy, classify, CLASSIFIED_EXACTLY, packetBasis, policyFromPrefetch, POLICY_PREFETCH, readPolicyPrefetch } from './approval.policy.ts';
import { insertRow } from '../../platform/db/insert-row.ts';
import { APPROVAL_PACKET_STEP, SYSTEM_APPROVER } from './approval.constants.ts';

export interface SlaScheduler {
  /**
   * Schedules the SLA timer (a delayed job with a deterministic id); harmless if the step's transaction
   * rolls back. The approval step calls it before its transaction commits and takes its failure as no
   * failure of its own (logged): the sweeper re-creates a missing timer (workflowsFor's repairWaiting). Filed at `deadline` (BullMQ: its timestamp plus its delay), its delay reckoned from
   * `from`, the database's time the deadline was reckoned from, when the caller has it; else from this
   * host's clock (a deadline this host's clock reads past is due at once).
   */
  schedule(args: { tenantId: string; runId: string; approvalRequestId: string; idempotencyHash: string; deadline: Date; from?: Date }): Promise<void>;
  /**
   * Removes the run's SLA timer once its request is decided, so no stale delayed job waits in the queue
   * (and in Bull Board) until the deadline. Best effort: a timer that still fires finds the request
   * decided and does nothing.
   */
  cancel(args: { idempotencyHash: string }): Promise<void>;
}

export { APPROVAL_PACKET_STEP } from './approval.constants.ts';

/**
 * Step 3: classify by policy and open the approval request. Class A is approved by the system at once;
 * B and C wait durably (checkpoint `waiting`, no worker slot held) for human decisions or the SLA.
 */
export function approvalPacketStep(deps: { slaBSeconds: number; slaCSeconds: number; sla: SlaScheduler }) {
  return defineStep({
    name: APPROVAL_PACKET_STEP,
    mayWait: true,
    // The tenant's policy is read with the run's state when the run job starts (one round trip less per run).
    prefetch: POLICY_PREFETCH,
    // The submission for the exact payback the class is decided on (paybackRatio); the model's own is rounded to 2 decimals.
    input: z.object({ submission: submissionSchema, outputs: z.object({ 'economics-model': economicsSchema }) }),
    output: approvalPacketSchema,
    async run({ submission, outputs }, ctx) {
      const econ = outputs['economics-model'];
      const defaults = { slaBSeconds: deps.slaBSeconds, slaCSeconds: deps.slaCSeconds };
      const { loaded, readAt } = policyFromPrefetch(ctx.prefetched === undefined ? await readPolicyPrefetch(ctx.em, ctx.run.tenantId) : ctx.prefetched, defaults);
      const { policy } = loaded;
      // Recorded in the packet (and so in the evidence pack): the tenant may replace its policy later.
      const applied = appliedPolicy(loaded);
      // On the exact payback (6.004 months is over a 6-month bound, though shown as 6): CLASSIFIED_EXACTLY, the packet's method.
      const { cls, reasons, required, slaSeconds, currencyMismatch } = classify(econ, policy, { payback: paybackRatio(submission.economics) });
      // The database's time of the policy read (POLICY_PREFETCH's read_at: its transaction's now()), never
      // this worker's clock, which may be off: a class A request is approved by the policy as the database
      // read it, at that time, as every other decision is stamped by the database (a human's check, an
      // expiry, a cancel); a class B or C request is opened then, and its SLA deadline is that time plus
      // the class's SLA, by the clock that judges it (a decision's and an expiry's statement_timestamp()),
      // so a worker's clock off by minutes neither shortens nor lengthens the SLA. The request, its system
      // decision and the packet (so the evidence pack) carry that one time, read with the policy: no
      // round trip more.
      const now = new Date(readAt);
      const id = randomUUID();
      const deadline = slaSeconds === null ? null : new Date(now.getTime() + slaSeconds * 1000);
      await insertRow(ctx.em, ApprovalRequest, {
        id,
        tenantId: ctx.run.tenantId,
        runId: ctx.run.id,
        approvalClass: cls,
        requiredApprovals: required,
        status: cls === 'A' ? 'approved' : 'pending',
        submittedBy: ctx.run.principal,
        reasons,
        slaDeadline: deadline,
        // The version its packet names: /verify holds the evidence pack's policy to it (evidence-records.ts).
        policyVersion: loaded.version,
        decidedAt: cls === 'A' ? now : null,
        createdAt: now,
        updatedAt: now,
      });
      const packet: ApprovalPacket = {
        approval_request_id: id,
        approval_class: cls,
        reasons,
        required_approvals: required,
        sla_deadline: deadline ? deadline.toISOString() : null,
        outcome: cls === 'A' ? 'approved' : 'pending',
        decisions: [],
        policy: applied,
        currency_mismatch: currencyMismatch,
        provenance: provenance('policy', CLASSIFIED_EXACTLY, packetBasis(econ, applied), now),
      };
      if (cls === 'A') {
        await insertRow(ctx.em, ApprovalDecision, {
          id: randomUUID(),
          tenantId: ctx.run.tenantId,
          approvalRequestId: id,
          approver: SYSTEM_APPROVER,
          decision: 'approve',
          kind: 'system',
          comment: 'class A: approved automatically by policy',
          createdAt: now,
        });
        packet.decisions.push({ decided_by: SYSTEM_APPROVER, decision: 'approve', comment: 'class A: approved automatically by policy', decided_at: now.toISOString(), kind: 'system' });
        return packet;
      }
      // Committed with the step's checkpoint, so a receiver hears of the request exactly when it exists (ADR 0013).
      ctx.emit('approval.requested', {
        approval_request_id: id,
        run_id: ctx.run.id,
        workflow: ctx.run.workflow,
        correlation_id: ctx.run.correlationId,
        approval_class: cls,
        required_approvals: required,
        sla_deadline: deadline!.toISOString(),
      });
      // Filed at the deadline by the database's clock: the SLA after the policy read, whatever this worker's clock reads.
      // Best effort: the timer goes through the platform's Redis, whose failure is no failure of this
      // step (five attempts of it against a Redis that refuses commands failed the run for good). The
      // request commits with its deadline, and the sweeper's waiting pass puts a missing timer back
      // from it within one sweep (repairWaiting, ADR 0002).
      try {
        await deps.sla.schedule({ tenantId: ctx.run.tenantId, runId: ctx.run.id, approvalRequestId: id, idempotencyHash: ctx.run.idempotencyHash, deadline: deadline!, from: now });
      } catch (err) {
        ctx.logger.warn(
          { err, run_id: ctx.run.id, tenant_id: ctx.run.tenantId, approval_request_id: id, sla_deadline: deadline!.toISOString() },
          "SLA timer not scheduled (Redis unavailable?): the request is opened without it; the sweeper's waiting pass puts it back from the request once the run has waited SWEEPER_MIN_AGE (a sweep that cannot reach Redis logs so and leaves it to the next)",
        );
      }
      return ctx.wait(packet);
    },
  });
}
