import { randomUUID } from 'node:crypto';
import type { EntityManager } from '@mikro-orm/postgresql';
import { ConflictError, ForbiddenError, NotFoundError } from '../../platform/errors/app-error.ts';
import type { Principal } from '../../platform/tenancy/jwt.ts';
import type { DurableRuntime } from '../../platform/durable/runtime.ts';
import { RunNotActiveError } from '../../platform/durable/errors.ts';
import { approvalPacketSchema, type ApprovalPacket } from '../golden-path/golden-path.schemas.ts';
import { APPROVER_ROLE } from './approval.constants.ts';
import { APPROVAL_PACKET_STEP, type SlaScheduler } from './approval-packet.step.ts';
import type { DecisionResult } from './approval.views.ts';

interface ApprovalRow {
  id: string;
  tenant_id: string;
  run_id: string;
  required_approvals: number;
  status: 'pending' | 'approved' | 'rejected' | 'expired';
  submitted_by: string;
  sla_deadline: Date | null;
  expired_now: boolean;
  /** Read by decide only (the SLA timer's id derives from it). */
  idempotency_hash?: string;
  /** The run's status (decide): a request of a run that is no longer waiting (cancelled) is not decided. */
  run_status?: string;
}

/**
 * Human decisions and SLA expiry. Both are conditional updates on the pending request under a row
 * lock, so approve-versus-expire is race-free; both resume the waiting run through the runtime.
 */
export class ApprovalService {
  private readonly runtime: DurableRuntime;
  private readonly sla: Pick<SlaScheduler, 'cancel'> | undefined;
  constructor(runtime: DurableRuntime, sla?: Pick<SlaScheduler, 'cancel'>) {
    this.runtime = runtime;
    this.sla = sla;
  }

  async decide(
    em: EntityManager,
    principal: Principal,
    approvalId: string,
    decision: 'approve' | 'reject',
    comment: string | null,
  ): Promise<{ result: DecisionResult; afterCommit: (() => Promise<void>) | undefined }> {
    if (!principal.roles.includes(APPROVER_ROLE)) throw new ForbiddenError(`Deciding needs the "${APPROVER_ROLE}" role.`);
    const [req] = await em.execute<ApprovalRow[]>(
      `select a.id, a.tenant_id, a.run_id, a.required_approvals, a.status, a.submitted_by, a.sla_deadline,
              coalesce(a.sla_deadline <= now(), false) as expired_now, r.idempotency_hash, r.status as run_status
         from approval_requests a join durable_runs r on r.tenant_id = a.tenant_id and r.id = a.run_id where a.id = ? for update of a for share of r`,
      [approvalId],
    );
    if (!req) throw new NotFoundError('approval request');
    if (req.submitted_by === principal.sub) throw new ForbiddenError('The submitter of a run cannot approve or reject it.');
    // A pending request of a run that no longer waits for it: the run was cancelled. The run row is
    // read `for share`: a cancel still in progress (it holds the row `for update`) is waited for and
    // then seen, so not even a first of two approvals is recorded after it (resume re-checks too).
    if (req.status === 'pending' && req.run_status !== 'waiting') throw new RunNotActiveError(req.run_id, req.run_status ?? 'unknown');
    if (req.status === 'pending' && req.expired_now) {
      throw new ConflictError('approval_expired', 'The approval request passed its SLA deadline; it can no longer be decided.');
    }
    if (req.status === 'expired') throw new ConflictError('approval_expired', 'The approval request expired at its SLA deadline; it can no longer be decided.');
    if (req.status !== 'pending') throw new ConflictError('approval_decided', `The approval request is already ${req.status}.`);
    const inserted = await em.execute<{ id: string }[]>(
      `insert into approval_decisions (id, tenant_id, approval_request_id, approver, decision, kind, comment, created_at)
       values (?, ?, ?, ?, ?, 'human', ?, now())
       on conflict (tenant_id, approval_request_id, approver) do nothing returning id`,
      [randomUUID(), req.tenant_id, req.id, principal.sub, decision, comment],
    );
    if (inserted.length === 0) throw new ConflictError('approver_already_decided', 'This approver has already decided on this request; a second, distinct approver is needed.');
    const decisions = await em.execute<{ approver: string; decision: 'approve' | 'reject'; comment: string | null; created_at: Date; kind: 'human' | 'system' }[]>(
      `select approver, decision, comment, created_at, kind from approval_decisions where tenant_id = ? and approval_request_id = ? order by created_at, approver`,
      [req.tenant_id, req.id],
    );
    const approvals = decisions.filter((d) => d.decision === 'approve').length;
    const outcome = decision === 'reject' ? 'rejected' : approvals >= req.required_approvals ? 'approved' : 'pending';
    let afterCommit: (() => Promise<void>) | undefined;
    if (outcome !== 'pending') {
      await em.execute(`update approval_requests set status = ?, decided_at = now(), updated_at = now() where id = ?`, [outcome, req.id], 'run');
      const { seq, packet } = await this.packet(em, req.tenant_id, req.run_id);
      const resumed: ApprovalPacket = {
        ...packet,
        outcome,
        decisions: decisions.map((d) => ({ decided_by: d.approver, decision: d.decision, comment: d.comment, decided_at: new Date(d.created_at).toISOString(), kind: d.kind })),
      };
      const enqueue = await this.runtime.resume(em, req.run_id, seq, resumed);
      const sla = this.sla;
      // After the commit: the run goes on, and its SLA timer has nothing left to time.
      afterCommit = async () => {
        await enqueue();
        if (req.sla_deadline && req.idempotency_hash && sla) await sla.cancel({ idempotencyHash: req.idempotency_hash });
      };
    }
    return {
      result: { approval_request_id: req.id, run_id: req.run_id, status: outcome, approvals, required_approvals: req.required_approvals },
      afterCommit,
    };
  }

  /**
   * The run is being cancelled, in the caller's transaction: its pending request (if it waits on one)
   * can no longer be decided (decide and expire read the run's status), and the returned function,
   * called after the commit, removes its SLA timer. Undefined when there is no timer to remove.
   */
  async runCancelled(em: EntityManager, tenantId: string, runId: string): Promise<(() => Promise<void>) | undefined> {
    const [req] = await em.execute<{ sla_deadline: Date | null; idempotency_hash: string }[]>(
      `select a.sla_deadline, r.idempotency_hash from approval_requests a join durable_runs r on r.tenant_id = a.tenant_id and r.id = a.run_id
        where a.tenant_id = ? and a.run_id = ? and a.status = 'pending'`,
      [tenantId, runId],
    );
    const sla = this.sla;
    if (!req?.sla_deadline || !sla) return undefined;
    return () => sla.cancel({ idempotencyHash: req.idempotency_hash });
  }

  /**
   * Expires the run's pending request once its SLA deadline has passed. `not_due` carries the stored
   * deadline: a timer that fired early (clock skew, a re-created timer, or one scheduled by an attempt
   * of the approval step whose transaction rolled back) waits for it, not for its own.
   */
  async expire(em: EntityManager, tenantId: string, runId: string): Promise<{ outcome: 'expired' | 'not_pending' } | { outcome: 'not_due'; deadline: Date | null }> {
    const [req] = await em.execute<ApprovalRow[]>(
      `select id, tenant_id, run_id, required_approvals, status, submitted_by, sla_deadline,
              (sla_deadline is not null and sla_deadline <= now()) as expired_now
         from approval_requests where tenant_id = ? and run_id = ? for update`,
      [tenantId, runId],
    );
    if (!req || req.status !== 'pending') return { outcome: 'not_pending' };
    if (!req.expired_now) return { outcome: 'not_due', deadline: req.sla_deadline ? new Date(req.sla_deadline) : null };
    const { seq, packet } = await this.packet(em, tenantId, runId);
    try {
      // First, under the run's lock: a run cancelled while its request was pending has nothing left to
      // expire (resume refuses before writing anything), and its request stays as the cancel left it.
      await this.runtime.resume(em, runId, seq, { ...packet, outcome: 'expired' }, { finalStatus: 'approval_expired' });
    } catch (e) {
      if (e instanceof RunNotActiveError) return { outcome: 'not_pending' };
      throw e;
    }
    await em.execute(`update approval_requests set status = 'expired', decided_at = now(), updated_at = now() where id = ?`, [req.id], 'run');
    return { outcome: 'expired' };
  }

  /**
   * The run's approval step checkpoint: the packet it stored and its sequence_num, found by the step's
   * name (each version of a workflow may place the step elsewhere; the runtime's resume checks the name
   * against the run's own version).
   */
  private async packet(em: EntityManager, tenantId: string, runId: string): Promise<{ seq: number; packet: ApprovalPacket }> {
    const [cp] = await em.execute<{ output: unknown; sequence_num: number }[]>(
      `select output, sequence_num from durable_checkpoints where tenant_id = ? and run_id = ? and step_name = ?`,
      [tenantId, runId, APPROVAL_PACKET_STEP],
    );
    if (!cp) throw new NotFoundError('approval checkpoint');
    return { seq: cp.sequence_num, packet: approvalPacketSchema.parse(cp.output) };
  }
}
