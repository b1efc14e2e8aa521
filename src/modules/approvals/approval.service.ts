import { randomUUID } from 'node:crypto';
import type { EntityManager } from '@mikro-orm/postgresql';
import { ConflictError, ForbiddenError, NotFoundError } from '../../platform/errors/app-error.ts';
import type { Principal } from '../../platform/tenancy/jwt.ts';
import type { DurableRuntime } from '../../platform/durable/runtime.ts';
import { RunNotActiveError } from '../../platform/durable/errors.ts';
import { ACTIVE_RUN_STATUSES } from '../../platform/durable/durable-run.entity.ts';
import { approvalPacketSchema, type ApprovalPacket } from '../golden-path/golden-path.schemas.ts';
import { APPROVER_ROLE, SYSTEM_APPROVER } from './approval.constants.ts';
import { APPROVAL_PACKET_STEP, type SlaScheduler } from './approval-packet.step.ts';
import type { DecisionResult } from './approval.views.ts';
import type { ApprovalStatus } from './approval.entities.ts';
import { isoTimeSql, OUTBOX_IDS, outboxCte } from '../../platform/webhooks/outbox.ts';
import type { WebhookEventType } from '../../platform/webhooks/webhook.entities.ts';

/** One human decision on a request (webhook-events.ts, `approvalDecidedData`). */
const APPROVAL_DECIDED: WebhookEventType = 'approval.decided';
/**
 * The `approval.decided` event of the decision the CTE `d` inserted (none when it inserted none):
 * parameters, the type and the event's data but its time, which is the decision's `created_at` — its
 * `decided_at`, and the envelope's `timestamp` too (DECIDED_AT), not now(): the second approval of a
 * class C request whose transaction began before the first's said it happened before the first.
 */
const DECIDED_EVENT = `select d.tenant_id, ?::text as type, ?::jsonb || jsonb_build_object('decided_at', ${isoTimeSql('d.created_at')}) as data, d.created_at as at from d`;
/** The event's time, for outboxCte's `at`: its decision's. */
const DECIDED_AT = 'ev.at';

const SUBMITTER_CANNOT_DECIDE = 'The submitter of a run cannot approve or reject it.';

/** The approval step as this module defines it in every version (approval-packet.step.ts): what an expiry needs of it. */
const APPROVAL_PACKET = { name: APPROVAL_PACKET_STEP, output: approvalPacketSchema };

interface ApprovalRow {
  id: string;
  tenant_id: string;
  run_id: string;
  required_approvals: number;
  status: ApprovalStatus;
  submitted_by: string;
  sla_deadline: Date | null;
  expired_now: boolean;
  /** Read by decide only (the SLA timer's id derives from it). */
  idempotency_hash?: string;
  /** The run's status (decide): a request of a run that is no longer waiting (cancelled) is not decided. */
  run_status?: string;
}

/**
 * Human decisions, SLA expiry and a cancel's withdrawal. Each is a conditional update on the pending
 * request under row locks, so approve, expire and cancel are race-free; decide and expire resume the
 * waiting run through the runtime.
 *
 * Lock order: the run row first (`for update`), then the request. A cancel locks the run in the route
 * before it withdraws the request (runCancelled), and decide and expire take the run's lock before the
 * request's, so no two of them can each hold the lock the other waits for (no deadlock); whichever
 * locks the run first goes first, and the other sees what it committed.
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
  ): Promise<{ result: DecisionResult; afterCommit: () => Promise<void> }> {
    if (!principal.roles.includes(APPROVER_ROLE)) throw new ForbiddenError(`Deciding needs the "${APPROVER_ROLE}" role.`);
    // The platform's own name for its automatic decisions: a human's decision under it would read as one.
    if (principal.sub === SYSTEM_APPROVER) {
      throw new ForbiddenError(`The subject "${SYSTEM_APPROVER}" is the platform's own approver (its automatic decisions): no token with it may decide; use a personal identity.`);
    }
    // The run row is locked first (the subquery's own `for update`, done before the join can return
    // the request to the outer lock), then the request: the lock order of a cancel (class comment). A
    // cancel still in progress is waited for and then seen, run and request as it left them.
    const [req] = await em.execute<(ApprovalRow & { workflow: string; workflow_version: number; correlation_id: string; sla_deadline_text: string | null })[]>(
      `select a.id, a.tenant_id, a.run_id, a.required_approvals, a.status, a.submitted_by, a.sla_deadline,
              coalesce(a.sla_deadline <= now(), false) as expired_now, a.sla_deadline::text as sla_deadline_text, r.idempotency_hash, r.status as run_status, r.workflow, r.workflow_version, r.correlation_id
         from (select tenant_id, id, idempotency_hash, status, workflow, workflow_version, correlation_id from durable_runs where id = (select run_id from approval_requests where id = ?) for update) r
         join approval_requests a on a.tenant_id = r.tenant_id and a.run_id = r.id where a.id = ? for update of a`,
      [approvalId, approvalId],
    );
    if (!req) throw await missingRun(em, principal, approvalId);
    if (req.submitted_by === principal.sub) throw new ForbiddenError(SUBMITTER_CANNOT_DECIDE);
    // The run was cancelled: its request was withdrawn with it (or, cancelled before `withdrawn`
    // existed and not migrated, still reads pending). Not even a first of two approvals is recorded.
    if (req.status === 'withdrawn' || (req.status === 'pending' && req.run_status !== 'waiting')) throw new RunNotActiveError(req.run_id, req.run_status ?? 'unknown');
    if (req.status === 'pending' && req.expired_now) {
      throw new ConflictError('approval_expired', 'The approval request passed its SLA deadline; it can no longer be decided.');
    }
    if (req.status === 'expired') throw new ConflictError('approval_expired', 'The approval request expired at its SLA deadline; it can no longer be decided.');
    if (req.status !== 'pending') throw new ConflictError('approval_decided', `The approval request is already ${req.status}.`);
    // The run's checkpoints before the request's decisions, in the order a step's transaction reads and
    // writes them (its checkpoints, then its rows): a migration that locks the tables in that order
    // (step_rows_natural_keys) waits for the decision, instead of holding the checkpoints it next reads
    // while waiting for the decisions it has read (a deadlock: PostgreSQL failed one of the two).
    // (Parsed only by the decision that ends the wait: a class C first approval never needed it.)
    const stored = await this.packetRow(em, req.tenant_id, req.run_id, req.sla_deadline_text);
    // The deadline again, by this statement's clock (packetRow): the locking read above may have waited
    // for the run row (another decision, a cancel, an expiry) or a table (a migration's lock) while the
    // deadline passed, and its now() — the transaction's start — is before that wait. The request has
    // read expired since; so is the answer. The expiry decides by the same clock under the same run
    // lock, so the two never both win. A decision accepted is recorded at the time of this check
    // (stored.checkedAt), not at now(): before the deadline (and before the expiry's, which is the
    // deadline), and after every decision it reads below — each was checked before it committed, and
    // this check came after that commit (the locks above) — so a request's decisions are recorded in
    // the order they were applied. By now(), a decision whose transaction began before another's but
    // locked the run after it (a class C second approval) was recorded before the approval it read.
    if (stored.overdue) throw new ConflictError('approval_expired', 'The approval request passed its SLA deadline; it can no longer be decided.');
    // The run's own version, before anything is recorded, whatever this decision's outcome: a class C
    // first approval does not resume the run, but a version retired for good (409) can never take the
    // second, and one this instance does not register (503) is decided where it is (ADR 0008).
    this.runtime.definition(req.workflow, req.workflow_version, { id: req.run_id, status: req.run_status ?? 'waiting' });
    // The request's decisions so far, read under the locks above: no other decision can commit before ours.
    const earlier = await decisionsOf(em, req.tenant_id, req.id);
    const approvals = earlier.filter((d) => d.decision === 'approve').length + (decision === 'approve' ? 1 : 0);
    const outcome = decision === 'reject' ? 'rejected' : approvals >= req.required_approvals ? 'approved' : 'pending';
    const event = {
      approval_request_id: req.id,
      run_id: req.run_id,
      workflow: req.workflow,
      correlation_id: req.correlation_id,
      decision,
      approver: principal.sub,
      status: outcome,
      approvals,
      required_approvals: req.required_approvals,
    };
    // The decision's `approval.decided` deliveries are inserted by the decision's own insert (the outbox,
    // ADR 0013): none when the insert inserts nothing (this approver already decided), none if the
    // transaction rolls back, and none on an idempotent replay, which does not run this.
    const [inserted] = await em.execute<(DecisionRow & { webhook_deliveries: string[] })[]>(
      `with d as (insert into approval_decisions (id, tenant_id, approval_request_id, approver, decision, kind, comment, created_at)
                  values (?, ?, ?, ?, ?, 'human', ?, ?::timestamptz)
                  on conflict (tenant_id, approval_request_id, approver) do nothing
                  returning tenant_id, approver, decision, comment, created_at, kind),
       ${outboxCte(DECIDED_EVENT, { at: DECIDED_AT })}
       select d.approver, d.decision, d.comment, d.created_at, d.kind, ${OUTBOX_IDS} from d`,
      [randomUUID(), req.tenant_id, req.id, principal.sub, decision, comment, stored.checkedAt, APPROVAL_DECIDED, JSON.stringify(event)],
    );
    if (!inserted) throw new ConflictError('approver_already_decided', 'This approver has already decided on this request; a second, distinct approver is needed.');
    const deliveries = inserted.webhook_deliveries;
    const runtime = this.runtime;
    let afterCommit = () => runtime.dispatchDeliveries(req.tenant_id, deliveries);
    if (outcome !== 'pending') {
      // In decisionsOf's order (created_at, each decision's check after its locks): this one is the
      // latest, and stays last in a tie of the milliseconds a Date keeps (a stable sort).
      const decisions = [...earlier, inserted].sort((x, y) => new Date(x.created_at).getTime() - new Date(y.created_at).getTime());
      // Decided when its final decision was: the same time, the check's, as that decision's created_at.
      await em.execute(`update approval_requests set status = ?, decided_at = ?::timestamptz, updated_at = now() where id = ?`, [outcome, stored.checkedAt, req.id], 'run');
      const resumed: ApprovalPacket = { ...approvalPacketSchema.parse(stored.output), outcome, decisions: decisions.map(decisionRecord) };
      // The step completed when its final decision was recorded (so never before the decisions its output lists).
      const enqueue = await this.runtime.resume(em, req.run_id, stored.seq, resumed, { at: stored.checkedAt });
      const sla = this.sla;
      const dispatch = afterCommit;
      // After the commit: the decision's webhook deliveries are sent, the run goes on, and its SLA timer has nothing left to time.
      afterCommit = async () => {
        await dispatch();
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
   * The run is being cancelled, in the caller's transaction, which holds the run row `for update`: its
   * pending request (if it waits on one) is withdrawn — `withdrawn`, `decided_at` the cancel's time,
   * the same as the run's `completed_at`; one past its SLA deadline, which already reads `expired`,
   * is recorded `expired` at its deadline instead — and the returned function, called after the commit, removes
   * its SLA timer. Undefined when there is no timer to remove. A request already decided stays as it
   * was: that is its history (an approved run cancelled in its next step).
   */
  async runCancelled(em: EntityManager, tenantId: string, runId: string): Promise<(() => Promise<void>) | undefined> {
    return releaseRequest(em, tenantId, runId, this.sla);
  }

  /**
   * Expires the run's pending request once its SLA deadline has passed. `no_request`: the run is still
   * active and has no request yet (its approval step has not committed it). `not_due` carries the stored
   * deadline, and how long it is from now by the database's clock (`remainingMs`, the clock that
   * decides it): a timer that fired early (clock skew, a re-created timer, or one scheduled by an attempt
   * of the approval step whose transaction rolled back) waits that long, not for its own deadline.
   */
  async expire(
    em: EntityManager,
    tenantId: string,
    runId: string,
  ): Promise<
    | { outcome: 'not_pending' }
    | { outcome: 'no_request' }
    | { outcome: 'expired'; approvalRequestId: string; correlationId: string; afterCommit: () => Promise<void> }
    | { outcome: 'not_due'; deadline: Date | null; remainingMs: number | null }
  > {
    // The run row first, then the request: the lock order of decide and a cancel (class comment). The
    // request by its key's values, `a.tenant_id = ? and a.run_id = ?`: joined on `r.id` alone, a plan
    // made on a table without statistics read the tenant's requests by tenant_id and matched the run as
    // a join filter (tenant-scoped-queries.test.ts).
    const [req] = await em.execute<(Omit<ApprovalRow, 'expired_now'> & { correlation_id: string; sla_deadline_text: string | null })[]>(
      `select a.id, a.tenant_id, a.run_id, a.required_approvals, a.status, a.submitted_by, a.sla_deadline,
              a.sla_deadline::text as sla_deadline_text, r.correlation_id
         from (select tenant_id, id, correlation_id from durable_runs where tenant_id = ? and id = ? for update) r
         join approval_requests a on a.tenant_id = r.tenant_id and a.run_id = r.id where a.tenant_id = ? and a.run_id = ? for update of a`,
      [tenantId, runId, tenantId, runId],
    );
    if (!req) {
      // No request yet, the run still active: the approval step schedules its timer before its
      // transaction commits the request (approval-packet.step.ts), with a deadline counted from the
      // policy's read at the job's start, so a short SLA or a slow step makes the timer fire first. The
      // caller puts it off (bounded) rather than spend it: the run would wait with no timer until a sweep.
      const [run] = await em.execute<{ active: boolean }[]>(`select (status || '') in (${ACTIVE_RUN_STATUSES.map((st) => `'${st}'`).join(', ')}) as active from durable_runs where tenant_id = ? and id = ?`, [tenantId, runId]);
      return run?.active ? { outcome: 'no_request' } : { outcome: 'not_pending' };
    }
    if (req.status !== 'pending') return { outcome: 'not_pending' };
    // Due or not by the next statement's clock (packetRow), as a decision decides: the locking read
    // above may have waited for the run row (a decision, a cancel) or a table (a migration's lock)
    // while the deadline passed, and by its now(), the transaction's start, before that wait, the
    // timer was put off as early though the request had read expired since.
    const stored = await this.packetRow(em, tenantId, runId, req.sla_deadline_text);
    if (!stored.overdue) return { outcome: 'not_due', deadline: req.sla_deadline ? new Date(req.sla_deadline) : null, remainingMs: stored.remainingMs };
    const seq = stored.seq;
    const packet = approvalPacketSchema.parse(stored.output);
    let afterCommit: () => Promise<void>;
    try {
      // A run that no longer waits (a cancel withdrew its request, or — cancelled before `withdrawn`
      // existed — left it pending) has nothing left to expire: resume refuses before writing anything.
      // With the decisions made before the deadline (a class C request's first approval): what the request shows.
      const decisions = (await decisionsOf(em, tenantId, req.id)).map(decisionRecord);
      // After the commit: the run's `run.approval_expired` webhook deliveries are sent (ADR 0013).
      // The run ends here and no step code runs, so a run of a retired version (WORKFLOW_VERSIONS_RETIRED,
      // whose definition no process will ever have) is expired too, its packet checked by this step's own
      // output schema (ADR 0008): putting its timer off could never succeed, and left the run waiting.
      afterCommit = await this.runtime.resume(em, runId, seq, { ...packet, outcome: 'expired', decisions }, { finalStatus: 'approval_expired', step: APPROVAL_PACKET });
    } catch (e) {
      if (e instanceof RunNotActiveError) return { outcome: 'not_pending' };
      throw e;
    }
    // Expired at its deadline, whenever the timer ran: what the reads showed from the deadline on (approvals.routes.ts).
    await em.execute(`update approval_requests set status = 'expired', decided_at = sla_deadline, updated_at = now() where id = ?`, [req.id], 'run');
    return { outcome: 'expired', approvalRequestId: req.id, correlationId: req.correlation_id, afterCommit };
  }

  /**
   * The run's approval step checkpoint as stored, found by the step's name (each version of a workflow
   * may place the step elsewhere; the runtime's resume checks the name against the run's own version):
   * its sequence_num and its output, not yet parsed; and whether the run's request is past its SLA
   * deadline by this statement's clock (`overdue`): the caller (decide, expire) holds the run and the
   * request by then, and statement_timestamp() is after the wait for those locks, which now() — the
   * transaction's start — is not. `checkedAt` is that clock, as text (microseconds kept): the time a
   * decision accepted by this check is recorded at (decide). `remainingMs`: how long until the deadline
   * by the same clock (null without one), for a timer that fired before it (expire's `not_due`).
   */
  private async packetRow(em: EntityManager, tenantId: string, runId: string, deadline: string | null): Promise<{ seq: number; output: unknown; overdue: boolean; checkedAt: string; remainingMs: number | null }> {
    // The deadline as the caller read it under the request's row lock (it cannot change meanwhile), as
    // text (microseconds kept): no second read of approval_requests, whose generic plan on a table
    // without statistics walked a tenant's requests filtering run_id (tenant-scoped-queries.test.ts).
    const [cp] = await em.execute<{ output: unknown; sequence_num: number; overdue: boolean | null; checked_at: string; remaining_ms: string | number | null }[]>(
      `select c.output, c.sequence_num, ?::timestamptz <= statement_timestamp() as overdue, statement_timestamp()::text as checked_at,
              ceil(extract(epoch from (?::timestamptz - statement_timestamp())) * 1000) as remaining_ms
         from durable_checkpoints c where c.tenant_id = ? and c.run_id = ? and c.step_name = ?`,
      [deadline, deadline, tenantId, runId, APPROVAL_PACKET_STEP],
    );
    if (!cp) throw new NotFoundError('approval checkpoint');
    const remainingMs = cp.remaining_ms === null ? null : Number(cp.remaining_ms);
    return { seq: cp.sequence_num, output: cp.output, overdue: cp.overdue === true, checkedAt: cp.checked_at, remainingMs };
  }
}

/**
 * Why decide found no request with its run: no such request for this tenant (404), or a request whose
 * run is gone — run retention deletes ended runs and keeps their approval requests (ADR 0011), so
 * the request was decided or closed long before: 409 `run_deleted`, an answer that never changes
 * (stored under the Idempotency-Key like any answer of the handler). The submitter is still refused
 * as such (403), as with every other request.
 */
async function missingRun(em: EntityManager, principal: Principal, approvalId: string): Promise<Error> {
  const [req] = await em.execute<{ run_id: string; status: ApprovalStatus; submitted_by: string }[]>(
    // Its status as it reads (GET, approvals.routes.ts): one still stored pending past its deadline reads
    // expired. By this statement's clock: decide's locking read may have waited for the run row (its
    // deletion by run retention) while the deadline passed, after now(), the transaction's start.
    `select run_id, case when status = 'pending' and sla_deadline <= statement_timestamp() then 'expired' else status end as status, submitted_by from approval_requests where id = ?`,
    [approvalId],
  );
  if (!req) return new NotFoundError('approval request');
  if (req.submitted_by === principal.sub) return new ForbiddenError(SUBMITTER_CANNOT_DECIDE);
  return new ConflictError(
    'run_deleted',
    `The run ${req.run_id} of this approval request ended and was removed by run retention (RUN_RETENTION); the request, ${req.status}, can no longer be decided.`,
    { extensions: { run_id: req.run_id, approval_status: req.status } },
  );
}

interface DecisionRow {
  approver: string;
  decision: 'approve' | 'reject';
  comment: string | null;
  created_at: Date;
  kind: 'human' | 'system';
}

/** A request's decisions, oldest first, as the packet that ends its wait records them (decisionRecord). */
async function decisionsOf(em: EntityManager, tenantId: string, requestId: string): Promise<DecisionRow[]> {
  return em.execute<DecisionRow[]>(
    `select approver, decision, comment, created_at, kind from approval_decisions where tenant_id = ? and approval_request_id = ? order by created_at, approver`,
    [tenantId, requestId],
  );
}

function decisionRecord(d: DecisionRow): ApprovalPacket['decisions'][number] {
  return { decided_by: d.approver, decision: d.decision, comment: d.comment, decided_at: new Date(d.created_at).toISOString(), kind: d.kind };
}

/**
 * Closes the pending approval request of a run that ended without it (cancelled, or failed while it
 * waited), in the caller's transaction, which has already locked the run row (the cancel `for update`,
 * a failure by moving it: `for no key update`, which this statement takes again — no stronger lock,
 * which a step's key-share lock would make it wait for while that step waits for the run), so the
 * run is locked before the request (the lock order of the class comment): `withdrawn` at the run's
 * end (its `completed_at`, which the caller has set: one time of the cancel, docs/api.md; this
 * statement's time if it has none), never at now(), the transaction's start, which is before the wait
 * for the run's lock and so before a decision the cancel waited for and followed; one already past its SLA deadline, which has read `expired` since
 * then though its timer has not recorded it, is recorded `expired` at its deadline, as it read —
 * never rewritten as withdrawn. Past it by this statement's clock: the caller's lock of the run may
 * have waited (behind a decision, say) while the deadline passed, after now(), the transaction's start. A request already decided stays as it was. Returns the closed
 * request's deadline and its run's idempotency hash (what its SLA timer is keyed by), if one was open.
 * The request by its key's values, as in expire; `status || ''` is the same test as `status =
 * 'pending'` but proves no partial index's predicate, so the request is reached by its run, never
 * through the pending requests' list index (approval.entities.ts).
 */
async function closePendingRequest(em: EntityManager, tenantId: string, runId: string): Promise<{ sla_deadline: Date | null; idempotency_hash: string } | undefined> {
  const [req] = await em.execute<{ sla_deadline: Date | null; idempotency_hash: string }[]>(
    `update approval_requests a set status = case when a.sla_deadline <= statement_timestamp() then 'expired' else 'withdrawn' end,
            decided_at = case when a.sla_deadline <= statement_timestamp() then a.sla_deadline else coalesce(r.completed_at, statement_timestamp()) end, updated_at = now()
       from (select tenant_id, id, idempotency_hash, completed_at from durable_runs where tenant_id = ? and id = ? for no key update) r
      where a.tenant_id = r.tenant_id and a.run_id = r.id and a.tenant_id = ? and a.run_id = ? and (a.status || '') = 'pending'
      returning a.sla_deadline, r.idempotency_hash`,
    [tenantId, runId, tenantId, runId],
  );
  return req;
}

/**
 * A run ended without its request (a cancel, or a failure for good while it waited): its pending
 * request is closed in the caller's transaction (closePendingRequest), and the returned function,
 * called after the commit, removes the request's SLA timer (`sla.cancel`: from the timers queue and
 * the golden-path queue). Undefined when there is no timer to remove.
 */
export async function releaseRequest(em: EntityManager, tenantId: string, runId: string, sla: Pick<SlaScheduler, 'cancel'> | undefined): Promise<(() => Promise<void>) | undefined> {
  const req = await closePendingRequest(em, tenantId, runId);
  if (!req?.sla_deadline || !sla) return undefined;
  return () => sla.cancel({ idempotencyHash: req.idempotency_hash });
}
