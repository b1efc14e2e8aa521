import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { groupCommitTotals } from '../db/group-commit.ts';

export interface Metrics {
  registry: Registry;
  stepDuration: Histogram<'workflow' | 'step' | 'replayed'>;
  /** Failed step attempts by what followed: retrying, failed (the run failed), infrastructure (left to the sweeper). */
  stepFailures: Counter<'workflow' | 'step' | 'outcome'>;
  idempotencyReplays: Counter;
  idempotencyConflicts: Counter<'reason'>;
  /** Requests a limit refused (429 by a tenant limit, 503 by load shedding), by reason and route template; no tenant label. */
  requestsRefused: Counter<'reason' | 'route'>;
  queueDepth: Gauge<'queue' | 'state'>;
  queuePaused: Gauge<'queue'>;
  queueGlobalConcurrency: Gauge<'queue'>;
  queueGlobalRateMax: Gauge<'queue'>;
  queueGlobalRateDuration: Gauge<'queue'>;
  runsByStatus: Gauge<'workflow' | 'status'>;
  /** Active runs (pending, running, waiting) by workflow version, and whether this process registers it (ADR 0008). */
  activeRuns: Gauge<'workflow' | 'version' | 'registered'>;
  /** Run jobs a worker put off because it does not register their run's workflow version (ADR 0008). */
  deferredJobs: Counter<'workflow' | 'version'>;
  /** Runs failed for good whose workflow's onFailed threw: rolled back alone, the run failed all the same (error.on_failed_error). */
  onFailedErrors: Counter<'workflow'>;
  slaTimersSpent: Counter;
  /** Run jobs a worker parked because their tenant had WORKER_MAX_ACTIVE_RUNS_PER_TENANT run jobs executing (ADR 0012). */
  parkedJobs: Counter<'workflow'>;
  /**
   * Parked jobs the workers' look for lost promotions moved from delayed to wait (ADR 0012, *Lost promotions*), by `jobs`
   * (runs, webhooks) and `how` (redo: a promotion pending past its grace; promote: an owner's free slot nobody was promoting into).
   */
  lostPromotionsRecovered: Counter<'jobs' | 'how'>;
  /** Failed runs an API client retried (POST …/runs/:id/retry, ADR 0009), counted once the retry committed. */
  runsRetried: Counter<'workflow'>;
  /** Ended runs run retention deleted (RUN_RETENTION, ADR 0011), by workflow; counted by the worker that deleted them. */
  runsDeleted: Counter<'workflow'>;
  webhookDeliveriesDeleted: Counter<'status'>;
  /** Webhook delivery attempts by outcome (delivered, retrying, failed), all tenants together (ADR 0013). */
  webhookDeliveries: Counter<'outcome'>;
  /** Webhook delivery jobs parked because their endpoint (WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT) or tenant (WEBHOOK_MAX_IN_FLIGHT_PER_TENANT) had its attempts in flight (ADR 0013). */
  webhookDeliveriesParked: Counter;
  webhookDeliveriesRateLimited: Counter;
  /** Test events that took their endpoint's next rate turn from a delivery waiting for it (ADR 0013, *Test events go ahead of a backlog*). */
  webhookTestEventsAhead: Counter;
  webhookEndpointsAutoDisabled: Counter;
  /** Settled webhook deliveries an admin made pending again (POST …/resend, ADR 0013), by route (single, bulk); counted once the resend committed. */
  webhookDeliveriesResent: Counter<'mode'>;
  /** Test events an admin sent to an endpoint (POST …/:id/test, ADR 0013); counted once committed. */
  webhookTestEvents: Counter;
  /** When the queue depths and run counts were last read (they keep the last reading while a read fails). */
  lastRead: Gauge;
}

/** A process type: an API, a worker, or a tool that runs both in one process (the readiness check, the bench). */
export type MetricsProcess = 'api' | 'worker' | 'tool';

/**
 * Which process type moves each metric: only it exposes it (a series another process type could only
 * ever answer at 0 — an API's last reading on a worker tripped its staleness alert from the first scrape).
 * The process metrics and group commit's counters are every process's (everyProcessMetrics). Every
 * `metrics.X` in src is on its owner's code path, and every metric createMetrics makes has an entry
 * here (metrics-owners.test.ts, which reads the metrics from the code, not from this list).
 */
export const METRIC_OWNERS = {
  stepDuration: 'worker',
  stepFailures: 'worker',
  idempotencyReplays: 'api',
  idempotencyConflicts: 'api',
  requestsRefused: 'api',
  queueDepth: 'api',
  queuePaused: 'api',
  queueGlobalConcurrency: 'api',
  queueGlobalRateMax: 'api',
  queueGlobalRateDuration: 'api',
  runsByStatus: 'api',
  activeRuns: 'api',
  deferredJobs: 'worker',
  onFailedErrors: 'worker',
  slaTimersSpent: 'worker',
  parkedJobs: 'worker',
  lostPromotionsRecovered: 'worker',
  runsRetried: 'api',
  runsDeleted: 'worker',
  webhookDeliveriesDeleted: 'worker',
  webhookDeliveries: 'worker',
  webhookDeliveriesParked: 'worker',
  webhookDeliveriesRateLimited: 'worker',
  webhookTestEventsAhead: 'worker',
  webhookEndpointsAutoDisabled: 'worker',
  webhookDeliveriesResent: 'api',
  webhookTestEvents: 'api',
  lastRead: 'api',
} as const satisfies Record<Exclude<keyof Metrics, 'registry'>, 'api' | 'worker'>;

/**
 * Prometheus metrics of one process type; /metrics serves its registry (collectors fill gauges at scrape time).
 * A metric another process type owns (METRIC_OWNERS) is still an object here, registered nowhere: never exposed.
 */
export function createMetrics(process: MetricsProcess): Metrics {
  const registry = new Registry();
  everyProcessMetrics(registry);
  const on = (field: keyof typeof METRIC_OWNERS): Registry[] => (process === 'tool' || METRIC_OWNERS[field] === process ? [registry] : []);
  return {
    registry,
    stepDuration: new Histogram({
      name: 'dealix_step_duration_seconds',
      help: 'Step execution time, by workflow, step and whether it replayed from a checkpoint',
      labelNames: ['workflow', 'step', 'replayed'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: on('stepDuration'),
    }),
    stepFailures: new Counter({
      name: 'dealix_step_failures_total',
      help: 'Failed step attempts, by workflow, step and outcome: retrying (retried with backoff), failed (for good: the run failed), infrastructure (database unreachable on the last attempt: left to the sweeper)',
      labelNames: ['workflow', 'step', 'outcome'],
      registers: on('stepFailures'),
    }),
    idempotencyReplays: new Counter({ name: 'dealix_idempotency_replays_total', help: 'Responses replayed from a completed Idempotency-Key', registers: on('idempotencyReplays') }),
    idempotencyConflicts: new Counter({
      name: 'dealix_idempotency_conflicts_total',
      help: 'Idempotency-Key conflicts: in_progress (409) and mismatch (422)',
      labelNames: ['reason'],
      registers: on('idempotencyConflicts'),
    }),
    requestsRefused: new Counter({
      name: 'dealix_requests_refused_total',
      help: 'Requests the API refused before doing their work, by reason (rate_limit, runs_in_flight, tenant_in_flight, webhook_resend: 429; load_shed, tenant_db_connections: 503) and route (method and template, or other); counted by the API process that refused them',
      labelNames: ['reason', 'route'],
      registers: on('requestsRefused'),
    }),
    queueDepth: new Gauge({ name: 'dealix_queue_jobs', help: 'Jobs per queue and state', labelNames: ['queue', 'state'], registers: on('queueDepth') }),
    queuePaused: new Gauge({
      name: 'dealix_queue_paused',
      help: 'Whether a queue is paused (1): its waiting jobs wait until it is resumed (Bull Board, queue.resume()), while every other check passes',
      labelNames: ['queue'],
      registers: on('queuePaused'),
    }),
    // Set from Bull Board by a release before this one's allowlist (admin-board.ts): in force, shown nowhere else.
    queueGlobalConcurrency: new Gauge({
      name: 'dealix_queue_global_concurrency',
      help: "A queue's global concurrency set in Redis, absent when none is set: at most this many of its jobs run at once across every worker, whatever WORKER_CONCURRENCY says; 0 starts none of them (docs/runbook.md, A queue capped by a global limit)",
      labelNames: ['queue'],
      registers: on('queueGlobalConcurrency'),
    }),
    queueGlobalRateMax: new Gauge({
      name: 'dealix_queue_global_rate_limit_max',
      help: "A queue's global rate limit set in Redis, absent when none is set: at most this many of its jobs start per dealix_queue_global_rate_limit_duration_seconds, across every worker (BullMQ starts one per window at 0)",
      labelNames: ['queue'],
      registers: on('queueGlobalRateMax'),
    }),
    queueGlobalRateDuration: new Gauge({
      name: 'dealix_queue_global_rate_limit_duration_seconds',
      help: "The window of a queue's global rate limit set in Redis, absent when none is set",
      labelNames: ['queue'],
      registers: on('queueGlobalRateDuration'),
    }),
    runsByStatus: new Gauge({ name: 'dealix_runs', help: 'Durable runs by workflow and status (all tenants)', labelNames: ['workflow', 'status'], registers: on('runsByStatus') }),
    activeRuns: new Gauge({
      name: 'dealix_active_runs',
      help: 'Pending, running and waiting runs by workflow version (all tenants); registered="false": this process cannot carry them on',
      labelNames: ['workflow', 'version', 'registered'],
      registers: on('activeRuns'),
    }),
    deferredJobs: new Counter({
      name: 'dealix_run_jobs_deferred_total',
      help: 'Run jobs this worker put off because it does not register their run\'s workflow version',
      labelNames: ['workflow', 'version'],
      registers: on('deferredJobs'),
    }),
    onFailedErrors: new Counter({
      name: 'dealix_on_failed_errors_total',
      help: "Runs failed for good whose workflow's onFailed threw (not on the database unreachable or timing out): the hook's writes rolled back alone, the run failed all the same with its error's on_failed_error; what the hook would have closed (a pending approval request) stays open",
      labelNames: ['workflow'],
      registers: on('onFailedErrors'),
    }),
    slaTimersSpent: new Counter({
      name: 'dealix_sla_timers_spent_total',
      help: 'SLA timers this worker spent after SLA_NO_REQUEST_DEFERRALS deferrals with their run still lacking its approval request (the sweeper re-creates one once the run waits)',
      registers: on('slaTimersSpent'),
    }),
    parkedJobs: new Counter({
      name: 'dealix_run_jobs_parked_total',
      help: 'Run job park events on this worker (a job delayed until a slot frees, no attempt spent, because its tenant had WORKER_MAX_ACTIVE_RUNS_PER_TENANT run jobs executing; a parked job that comes back on its fallback delay to a full tenant parks again and counts again), by workflow',
      labelNames: ['workflow'],
      registers: on('parkedJobs'),
    }),
    lostPromotionsRecovered: new Counter({
      name: 'dealix_lost_promotions_recovered_total',
      help: "Parked jobs this worker's look for lost promotions (every 10 s, caps on) moved from delayed to wait, by jobs (runs: WORKER_MAX_ACTIVE_RUNS_PER_TENANT; webhooks: WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT/_PER_TENANT) and how: redo (a job popped for promotion still parked past its grace: its promoter died or its promote was lost), promote (an owner's slot free, neither held nor kept for a promotion pending, with jobs parked: a lapsed lease, a raised override, an older worker's pop)",
      labelNames: ['jobs', 'how'],
      registers: on('lostPromotionsRecovered'),
    }),
    runsRetried: new Counter({
      name: 'dealix_runs_retried_total',
      help: 'Failed runs retried through the API (each retry once it committed), by workflow',
      labelNames: ['workflow'],
      registers: on('runsRetried'),
    }),
    runsDeleted: new Counter({
      name: 'dealix_runs_deleted_total',
      help: 'Ended runs deleted by run retention (RUN_RETENTION) with their checkpoints, by workflow; counted by the worker process that deleted them',
      labelNames: ['workflow'],
      registers: on('runsDeleted'),
    }),
    webhookDeliveriesDeleted: new Counter({
      name: 'dealix_webhook_deliveries_deleted_total',
      help: 'Settled webhook deliveries (delivered, failed) deleted by run retention (RUN_RETENTION), by status; counted by the worker process that deleted them',
      labelNames: ['status'],
      registers: on('webhookDeliveriesDeleted'),
    }),
    webhookDeliveries: new Counter({
      name: 'dealix_webhook_deliveries_total',
      help: 'Webhook delivery attempts by outcome: delivered (2xx), retrying (failed, another attempt scheduled), failed (given up); counted by the worker that made the attempt',
      labelNames: ['outcome'],
      registers: on('webhookDeliveries'),
    }),
    webhookDeliveriesParked: new Counter({
      name: 'dealix_webhook_deliveries_parked_total',
      help: 'Webhook delivery jobs this worker parked (delayed until a slot frees, no attempt spent) because their endpoint had WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT, or their tenant WEBHOOK_MAX_IN_FLIGHT_PER_TENANT, attempts in flight; each park once',
      registers: on('webhookDeliveriesParked'),
    }),
    webhookDeliveriesRateLimited: new Counter({
      name: 'dealix_webhook_deliveries_rate_limited_total',
      help: "Webhook delivery jobs this worker put back (delayed until their turn, no attempt spent) because their endpoint's rate_limit_per_second had no turn free; each put-back once",
      registers: on('webhookDeliveriesRateLimited'),
    }),
    webhookTestEventsAhead: new Counter({
      name: 'dealix_webhook_test_events_ahead_total',
      help: "Test events (webhook.test) that took their endpoint's next rate_limit_per_second turn from a delivery waiting for it, which was given a turn at the tail; counted by the worker whose test took it",
      registers: on('webhookTestEventsAhead'),
    }),
    webhookDeliveriesResent: new Counter({
      name: 'dealix_webhook_deliveries_resent_total',
      help: 'Settled webhook deliveries resent by a tenant admin (made pending again, one attempt each), by mode: single (…/:delivery_id/resend) or bulk (…/deliveries/resend); counted by the API once committed',
      labelNames: ['mode'],
      registers: on('webhookDeliveriesResent'),
    }),
    webhookTestEvents: new Counter({
      name: 'dealix_webhook_test_events_total',
      help: 'Test events (webhook.test) a tenant admin sent to a webhook endpoint (POST …/:id/test), one delivery each; counted by the API once committed',
      registers: on('webhookTestEvents'),
    }),
    webhookEndpointsAutoDisabled: new Counter({
      name: 'dealix_webhook_endpoints_auto_disabled_total',
      help: 'Webhook endpoints disabled because their deliveries failed for WEBHOOK_DISABLE_AFTER with no 2xx; counted by the worker whose failed attempt disabled them',
      registers: on('webhookEndpointsAutoDisabled'),
    }),
    lastRead: new Gauge({
      name: 'dealix_metrics_last_read_timestamp_seconds',
      help: 'Unix time of the last successful reading of dealix_queue_jobs and dealix_runs (stale while PostgreSQL or Redis is down)',
      registers: on('lastRead'),
    }),
  };
}

/**
 * The metrics every process type exposes, registered on `registry`: prom-client's process metrics and
 * group commit's counters. The only ones without an entry in METRIC_OWNERS: any other metric a process
 * registers is a field of Metrics with an owner (metrics-owners.test.ts derives both sets from here and
 * from createMetrics, so a metric added with neither fails it).
 */
export function everyProcessMetrics(registry: Registry): void {
  collectDefaultMetrics({ register: registry, prefix: 'dealix_' });
  groupCommitCounters(registry);
}

/** Group commit (ADR 0007): counters read from the process's pools at scrape time. */
function groupCommitCounters(registry: Registry): void {
  const counter = (name: string, help: string, key: keyof ReturnType<typeof groupCommitTotals>) =>
    new Counter({
      name,
      help,
      registers: [registry],
      collect() {
        this.reset();
        this.inc(groupCommitTotals()[key]);
      },
    });
  counter('dealix_db_group_commit_transactions_total', 'Whole one-message transactions sent through group commit', 'transactions');
  counter('dealix_db_group_commit_groups_total', 'Grouped transactions that carried more than one of them', 'grouped');
  counter('dealix_db_group_commit_grouped_transactions_total', 'Transactions that went as members of a group', 'groupedMembers');
  counter('dealix_db_group_commit_failed_groups_total', 'Groups PostgreSQL refused, whose members were then sent alone', 'failedGroups');
}
