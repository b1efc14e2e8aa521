import type { Job, Queue } from 'bullmq';
import { DelayedError } from 'bullmq';
import type { MikroORM } from '@mikro-orm/postgresql';
import type { Logger } from 'pino';
import type { Config } from '../platform/config/config.ts';
import { inRunTrace, keepFromConfig, type DurableRuntime, type KeepJobs } from '../platform/durable/runtime.ts';
import type { AdmissionControl, RouteDef } from '../platform/http/route.ts';
import { deferDelayMs, type WorkflowDef } from '../platform/durable/workflow.ts';
import { WorkflowVersionUnavailableError } from '../platform/durable/errors.ts';
import { versionLabel } from '../platform/durable/registry.ts';
import type { JobHandler } from '../platform/durable/worker-host.ts';
import { tenantEm } from '../platform/db/tenant-em.ts';
import { namedJobId } from '../platform/queue/job-ids.ts';
import { TIMER_QUEUE } from '../platform/queue/timers.ts';
import { goldenPathRoutes } from './golden-path/golden-path.routes.ts';
import { GOLDEN_PATH_QUEUE, goldenPathWorkflow } from './golden-path/golden-path.workflow.ts';
import { approvalPacketStep, type SlaScheduler } from './approvals/approval-packet.step.ts';
import { ApprovalService, releaseRequest } from './approvals/approval.service.ts';
import { approvalRoutes } from './approvals/approvals.routes.ts';
import { approvalPolicyRoutes } from './approvals/approval-policy.routes.ts';
import { SLA_JOB_NAME } from './approvals/approval.constants.ts';
import { evidencePackStep } from './evidence/evidence-pack.step.ts';
import { evidenceRoutes } from './evidence/evidence.routes.ts';
import { partnerOffboardingWorkflow } from './partner-offboarding/partner-offboarding.workflow.ts';
import { partnerOffboardingRoutes } from './partner-offboarding/partner-offboarding.routes.ts';

export interface SlaJobData {
  tenant_id: string;
  run_id: string;
  hash: string;
  deadline: string;
  /** How many times this timer was put off for want of a request (expire's `no_request`): bounded by SLA_NO_REQUEST_DEFERRALS. */
  no_request_deferrals?: number;
}

/** The business modules' workflows and routes, handed to the composition root. */
/** Default SLAs in seconds (APPROVAL_SLA_B / APPROVAL_SLA_C: whole seconds, 1 s – 365 d, config.ts); a tenant's policy may override them. */
function slaDefaults(config: Config): { slaBSeconds: number; slaCSeconds: number } {
  return { slaBSeconds: config.APPROVAL_SLA_B / 1000, slaCSeconds: config.APPROVAL_SLA_C / 1000 };
}

const slaJobId = (idempotencyHash: string) => namedJobId('gp', idempotencyHash, 'sla');

/** Where SLA timers live: the timers queue, and the golden-path queue where releases before ADR 0015 put them. */
export interface SlaQueues {
  /** The timers queue (TIMER_QUEUE): every new timer is added here. */
  timers: () => Queue;
  /** The workflow's run queue: timers older releases added there are still removed there. */
  legacy?: () => Queue;
}

/**
 * SLA timers: one delayed job per waiting run, on the timers queue (ADR 0015: a timer that comes due
 * waits behind other timers only, never behind the run queue's backlog), keyed by the run's idempotency
 * hash. The approval step schedules its timer inside its transaction; if that attempt rolls back and a
 * retry stores another deadline (a policy changed in between, say), the job id is already taken: a
 * waiting timer due later is moved to the new deadline, so it never fires late; one due earlier stays
 * (it may be the committed request's, the schedule a losing execution's: moveTimer) and, firing early,
 * waits for the stored deadline. A timer of an earlier
 * request of the run that has already fired (an attempt that rolled back, or the run's failed
 * generation before an API client retried it) is kept finished under the id by BullMQ's retention,
 * which makes the add a no-op: it is replaced, so the new request has its timer at once (ADR 0009).
 * A cancel removes the timer from both queues: one an older release left in the golden-path queue
 * (a rolling deploy) is removed too.
 */
export function slaScheduler(queues: SlaQueues, keep: { completed: KeepJobs; failed: KeepJobs }): SlaScheduler {
  const queue = queues.timers;
  return {
    async schedule({ tenantId, runId, idempotencyHash, deadline, from }) {
      const data: SlaJobData = { tenant_id: tenantId, run_id: runId, hash: idempotencyHash, deadline: deadline.toISOString() };
      const jobId = slaJobId(idempotencyHash);
      const add = () => {
        // One clock reading for both: BullMQ files a delayed job at timestamp + delay, and a timestamp
        // it read itself a millisecond after `delay` was worked out put the timer a millisecond late.
        // The database's (`from`) where the caller has it: the delay is then deadline less the clock
        // that stamped the deadline, never this host's, which may be off by more than the time left (a
        // timer due at once, firing early until the deadline) or behind (a delay longer than the SLA).
        const now = from?.getTime() ?? Date.now();
        return queue().add(SLA_JOB_NAME, data, {
          jobId,
          timestamp: now,
          delay: Math.max(0, deadline.getTime() - now),
          attempts: 10,
          backoff: { type: 'exponential', delay: 1000, jitter: 0.5 },
          removeOnComplete: keep.completed,
          removeOnFail: keep.failed,
        });
      };
      await add();
      const state = await queue().getJobState(jobId);
      if (state === 'completed' || state === 'failed') {
        // A spent timer took the id: removed, the add goes through. (Two schedules doing this at once
        // each remove then add, so one timer is left either way.)
        await queue().remove(jobId);
        await add();
      }
      await moveTimer(queue(), jobId, data);
    },
    async cancel({ idempotencyHash }) {
      // A timer being processed right now is locked and stays; it finds the request decided.
      const jobId = slaJobId(idempotencyHash);
      await Promise.all([queue(), ...(queues.legacy ? [queues.legacy()] : [])].map((q) => q.remove(jobId).catch(() => 0)));
    },
  };
}

/**
 * A timer already waiting under the id with a later deadline (the add above was a no-op) is moved to
 * `data`'s, earlier one; one with an earlier deadline is left as it is. A schedule is not always the
 * committed request's: two executions of the approval step at once (a stalled job's re-delivery)
 * both schedule, and the loser, whose request rolls back with its step, schedules after the winner, a
 * later deadline. A timer due too early costs one firing (expire's `not_due`: it waits for the stored
 * deadline); one due too late would leave the run waiting past the deadline its request reads expired at.
 */
async function moveTimer(queue: Queue, jobId: string, data: SlaJobData): Promise<void> {
  const stored = await queue.getJob(jobId);
  if (!stored || Date.parse((stored.data as SlaJobData).deadline) <= Date.parse(data.deadline)) return;
  try {
    await stored.changeDelay(Math.max(0, Date.parse(data.deadline) - Date.now()));
    await stored.updateData(data);
  } catch {
    // Not delayed any more (it fires right now, or ended): the timer's handler reads the stored
    // deadline (expire's not_due), and the sweeper replaces a timer that ended early (waitingJobId).
  }
}

/** The SLA timers' queues, from the container's queue factory (queues are created lazily, once Redis is connected). */
export const slaQueues = (queue: (name: string) => Queue): SlaQueues => ({ timers: () => queue(TIMER_QUEUE), legacy: () => queue(GOLDEN_PATH_QUEUE) });

export function workflowsFor(config: Config, deps: { queue: (name: string) => Queue }): WorkflowDef[] {
  const sla = slaScheduler(slaQueues(deps.queue), keepFromConfig(config));
  const approvalStep = approvalPacketStep({ ...slaDefaults(config), sla });
  return [
    goldenPathWorkflow(approvalStep, evidencePackStep, async (em, { tenantId, runId }) => {
      // Redis may have lost the SLA timer: re-create it from the approval row (idempotent job id). The
      // statuses tested as `status || ''`, which proves no partial index's predicate: `a.status =
      // 'pending'` proves the pending requests' list index's, and `r.status = 'waiting'` the active runs'
      // lists', and a plan made on tables without statistics walked the tenant's pending requests (the
      // run matched as a filter) and its active runs (`id` behind `workflow`), per waiting run repaired
      // (tenant-scoped-queries.test.ts).
      // `db_now`: the database's clock, which stamped the deadline and judges it, that the timer's delay is reckoned from.
      const [req] = await em.execute<{ sla_deadline: Date | null; db_now: Date; idempotency_hash: string; tenant_id: string; traceparent: string | null; correlation_id: string }[]>(
        `select a.sla_deadline, statement_timestamp() as db_now, r.idempotency_hash, r.tenant_id, r.traceparent, r.correlation_id from approval_requests a join durable_runs r on r.tenant_id = a.tenant_id and r.id = a.run_id
          where a.tenant_id = ? and a.run_id = ? and (a.status || '') = 'pending' and (r.status || '') = 'waiting'`,
        [tenantId, runId],
      );
      // A run cancelled since the sweeper listed it as waiting gets no timer back.
      if (!req?.sla_deadline) return;
      // A timer that ended (failed for good, or completed early) while the request is still pending is spent: schedule replaces it.
      // In the run's trace, with its correlation id: the timer, and the expiry it brings, stay the run's.
      const deadline = new Date(req.sla_deadline);
      await inRunTrace(req, () => sla.schedule({ tenantId: req.tenant_id, runId, approvalRequestId: '', idempotencyHash: req.idempotency_hash, deadline, from: new Date(req.db_now) }));
    }, slaJobId,
    // A run that fails for good while it waits leaves no request open that no one may decide, and,
    // once the failure has committed, no SLA timer to fire (from both queues, as a cancel).
    (em, { tenantId, runId }) => releaseRequest(em, tenantId, runId, sla)),
    partnerOffboardingWorkflow(),
  ];
}

export function routesFor(deps: { config: Config; runtime: DurableRuntime; queue: (name: string) => Queue; admission?: AdmissionControl; onRunRetried?: (workflow: string) => void }): RouteDef[] {
  const approvals = new ApprovalService(deps.runtime, slaScheduler(slaQueues(deps.queue), deps.runtime.keep));
  return [
    ...goldenPathRoutes({
      runtime: deps.runtime,
      ...(deps.admission ? { admission: deps.admission } : {}),
      onCancelled: (em, tenantId, runId) => approvals.runCancelled(em, tenantId, runId),
      ...(deps.onRunRetried ? { onRetried: deps.onRunRetried } : {}),
    }),
    ...approvalRoutes({ approvals }),
    ...approvalPolicyRoutes({ ...slaDefaults(deps.config), changeTtlMs: deps.config.APPROVAL_POLICY_CHANGE_TTL }),
    ...evidenceRoutes(),
    ...partnerOffboardingRoutes({
      runtime: deps.runtime,
      ...(deps.admission ? { admission: deps.admission } : {}),
      ...(deps.onRunRetried ? { onRetried: deps.onRunRetried } : {}),
    }),
  ];
}

/**
 * How many times an SLA timer that finds its run active and no request yet is put off (expire's
 * `no_request`) before it is spent: the approval step commits its request right after it schedules the
 * timer, so a few seconds cover it; the bound keeps a timer whose step attempt rolled back from coming back
 * for ever (the step's retry schedules its own). The default of the SLA_NO_REQUEST_DEFERRALS setting
 * (config.ts), which a worker hands to jobHandlersFor; counted in the job's data (SlaJobData.no_request_deferrals).
 */
export const SLA_NO_REQUEST_DEFERRALS = 10;

export function jobHandlersFor(deps: {
  orm: MikroORM;
  runtime: DurableRuntime;
  logger?: Logger;
  /** How many times a timer that meets no request is put off before it is spent (SLA_NO_REQUEST_DEFERRALS: the default, and the config's). */
  noRequestDeferrals?: number;
  /** A timer spent after its `no_request` deferrals (dealix_sla_timers_spent_total). */
  onNoRequestSpent?(): void;
  /** A timer put off because this process does not register its run's workflow version (as the executor reports its jobs). */
  onDeferred?(info: { workflow: string; version: number | undefined }): void;
}): Record<string, JobHandler> {
  const approvals = new ApprovalService(deps.runtime);
  return {
    async [SLA_JOB_NAME](job: Job) {
      const data = job.data as SlaJobData;
      let found: Awaited<ReturnType<ApprovalService['expire']>>;
      try {
        found = await tenantEm(deps.orm, data.tenant_id).transactional((tx) => approvals.expire(tx, data.tenant_id, data.run_id));
      } catch (e) {
        // Not a retired version (WORKFLOW_VERSIONS_RETIRED): its run is expired without the definition
        // (approvals.expire), since no worker will ever have it and putting the timer off would leave
        // the run waiting for good (ADR 0008).
        if (!(e instanceof WorkflowVersionUnavailableError)) throw e;
        // The run's workflow version is not registered here (a rolling deploy): nothing was written;
        // put the timer off for a worker that has it instead of spending its attempts (ADR 0008),
        // logged and counted as the executor does for run jobs.
        const delayMs = deferDelayMs(job.attemptsStarted);
        deps.onDeferred?.({ workflow: e.workflow, version: e.version });
        deps.logger?.warn(
          { job_id: job.id, run_id: data.run_id, tenant_id: data.tenant_id, workflow: versionLabel(e.workflow, e.version), registered: deps.runtime.workflows.labels(), delay_ms: delayMs },
          'SLA timer of a workflow version this worker does not register: put off for a worker that does',
        );
        await job.moveToDelayed(Date.now() + delayMs, job.token);
        throw new DelayedError();
      }
      if (found.outcome === 'no_request') {
        // Fired before the approval step committed the request it was scheduled by (the step schedules
        // it first; its deadline counts from the policy's read at the job's start): put off while the
        // step may still commit, doubling from 1 s to 10 s, SLA_NO_REQUEST_DEFERRALS times (about 75 s).
        // Counted in the job's data, by these deferrals only: BullMQ's attemptsStarted also counts an
        // attempt that threw and a stalled job restarted after its worker died, and a timer that had
        // crashed a few times gave up early. Past the bound the step's attempt has rolled back (its
        // commit waits at most DATABASE_STATEMENT_TIMEOUT, 30 s by default): its retry schedules the
        // timer again (a spent one is replaced). One whose request commits later still (a longer
        // statement timeout) leaves the run waiting with a spent timer: the sweeper's waiting pass
        // re-creates it (a timer that ended counts as gone), and a deadline already past expires the run
        // at once — late by at most a sweep, never a silent hang: the give-up is logged and counted.
        const bound = deps.noRequestDeferrals ?? SLA_NO_REQUEST_DEFERRALS;
        const deferrals = data.no_request_deferrals ?? 0;
        if (deferrals >= bound) {
          deps.onNoRequestSpent?.();
          deps.logger?.warn(
            { job_id: job.id, run_id: data.run_id, tenant_id: data.tenant_id, no_request_deferrals: deferrals },
            "SLA timer spent: its run still had no approval request after SLA_NO_REQUEST_DEFERRALS deferrals; the approval step's retry schedules it again, or the sweeper re-creates it once the run waits",
          );
          return { outcome: 'no_request' };
        }
        // The count first: a move that then fails (the lock lost) counts one deferral too many, never one too few.
        await job.updateData({ ...data, no_request_deferrals: deferrals + 1 });
        await job.moveToDelayed(Date.now() + deferDelayMs(deferrals + 1), job.token);
        throw new DelayedError();
      }
      if (found.outcome === 'not_due') {
        // Fired early (clock skew, a re-created timer, or a timer whose step attempt rolled back and
        // whose retry stored another deadline): wait for the stored deadline, not this job's own.
        if (!found.deadline || found.remainingMs === null) return { outcome: 'no_deadline' };
        // BullMQ fires a delayed job by the clock of the worker that takes it; the database's decides.
        // A deadline still ahead on this worker's clock is waited for as stored (due at it to the
        // millisecond). One this worker's clock says has come, though the database's does not, is this
        // clock running ahead: re-delayed to it, the timer came back every 500 ms until the clocks
        // agreed. It waits out what is left by the database's clock instead.
        const deadline = found.deadline.getTime();
        const now = Date.now();
        await job.moveToDelayed(deadline > now + 500 ? deadline : now + Math.max(found.remainingMs, 500), job.token);
        throw new DelayedError();
      }
      if (found.outcome === 'expired') {
        await found.afterCommit();
        // The run ended here: one line among the run's (its run id and correlation id).
        deps.logger?.info(
          { job_id: job.id, run_id: data.run_id, tenant_id: data.tenant_id, correlation_id: found.correlationId, approval_request_id: found.approvalRequestId },
          'approval request expired undecided at its SLA deadline: the run ended approval_expired',
        );
      }
      return { outcome: found.outcome };
    },
  };
}
