import { createHash } from 'node:crypto';
import type { Worker } from 'bullmq';
import type { Container } from './container.ts';
import { connectedWorkers, createRedis, warnWhenIdleTimeout, workerConnectionName } from './platform/queue/connections.ts';
import { StepExecutor } from './platform/durable/executor.ts';
import { Sweeper } from './platform/durable/sweeper.ts';
import { startWorkers } from './platform/durable/worker-host.ts';
import { TenantSlots, type LostPromotion } from './platform/durable/tenant-slots.ts';
import { seedActiveRunOverrides } from './platform/limits/tenant-limits.ts';
import type { Config } from './platform/config/config.ts';
import type { Redis } from 'ioredis';
import { scheduleMaintenance, MAINTENANCE_QUEUE, maintenanceHandlers, repairRunRetentionSchedule, repairStandingSchedulers, restoreMaintenanceSchedulers } from './platform/queue/maintenance.ts';
import { TIMER_QUEUE } from './platform/queue/timers.ts';
import { startMetricsServer } from './platform/telemetry/metrics-server.ts';
import { exitAfterFailedStart, onShutdown } from './platform/process/shutdown.ts';
import { WEBHOOK_QUEUE, webhookHandlers, webhookLostPromotions, type WebhookSlotsUse } from './platform/webhooks/delivery.ts';
import type { Metrics } from './platform/telemetry/metrics.ts';
import { warnWhenGuardOff } from './platform/webhooks/ssrf.ts';
import { warnWhenTlsVerificationOff } from './platform/process/tls-verification.ts';
import { EndpointRates } from './platform/webhooks/rate-limit.ts';
import { webhookResolver, webhookUrlPolicy } from './container.ts';

export interface WorkerProcess {
  workers: Worker[];
  sweeper: Sweeper;
  stop(): Promise<void>;
}

/**
 * Where a worker's start was (runWorkerProcess says it when stopped before the worker had started):
 * opening its metrics port, recording its run-retention decision in PostgreSQL (ADR 0011), or waiting
 * for Redis (the maintenance schedulers are upserted there: with Redis down the start waits there).
 */
export type StartStage = 'metrics-port' | 'postgresql' | 'redis';

/** What a worker stopped before it had started says, by where its start was (a literal each, for searching the logs). */
const STOPPED_BEFORE_START: Record<StartStage, string> = {
  'metrics-port': 'stopped before the worker had started (still opening its metrics port)',
  postgresql: 'stopped before the worker had started (still recording its run-retention decision in PostgreSQL)',
  redis: 'stopped before the worker had started (still waiting for Redis)',
};

/**
 * A worker process's life (the worker entries call it): SIGTERM/SIGINT are handled from the start, not
 * only once the worker has started. A worker stopped while it starts stops there, says where it was
 * (`stopped before the worker had started (still waiting for Redis)`, or `… (still recording its
 * run-retention decision in PostgreSQL)`) and exits 0: what its start had opened (workers, their
 * connection, the maintenance queue, the metrics port) is closed before the container is, so nothing
 * of the start is left to fail after the last line. Still waiting for Redis with Redis down, it stops
 * waiting at once (its workers are stopped as at any stop: none has a job while Redis is down). A
 * start that fails otherwise (the metrics port taken) is one log line, `worker could not start`, and
 * exit 1 (after closing the container, for FAILED_START_CLOSE_MS at most: shutdown.ts). Resolves once the worker has started (undefined when it was stopped first).
 */
export async function runWorkerProcess(c: Container): Promise<WorkerProcess | undefined> {
  const stopping = new AbortController();
  let stage: StartStage | undefined;
  const started = startWorkerProcess(c, { signal: stopping.signal, onStage: (s) => (stage = s) }).catch((err: unknown) => {
    if (stopping.signal.aborted) return undefined;
    // Thrown past the entry, it was a bare stack trace: a log drain splits it into unrelated lines.
    c.logger.fatal({ err }, 'worker could not start');
    exitAfterFailedStart(c.logger, () => c.close());
    return undefined;
  });
  onShutdown(c.logger, c.config.WORKER_SHUTDOWN_GRACE, async () => {
    // Where the start was when told to stop, not where its stop took it.
    const at = stage;
    stopping.abort(new Error('worker stopping'));
    // Settles once the start has stopped and closed what it had opened (or has started: then stopped as any worker).
    const worker = await started.catch(() => undefined);
    if (worker) await worker.stop();
    else c.logger.info({ stage: at }, STOPPED_BEFORE_START[at ?? 'redis']);
    await c.close();
  });
  return started;
}

/**
 * Starts the BullMQ workers, the recovery sweeper and the maintenance scheduler for one worker process.
 * Start waits for Redis (the maintenance schedulers are upserted there), then records its run-retention
 * decision in PostgreSQL (ADR 0011), then upserts the schedulers. When `signal` aborts first, the start stops where it is — after the
 * statement in flight in PostgreSQL, at once while it waits for Redis — closes what it opened (the
 * workers, as at any stop; their connection; the maintenance queue; the metrics port) and rejects.
 * `onStage` is told where the start is (StartStage), each step also logged at debug.
 */
export async function startWorkerProcess(c: Container, opts: { signal?: AbortSignal; onStage?: (stage: StartStage) => void } = {}): Promise<WorkerProcess> {
  const { signal } = opts;
  const at = (stage: StartStage) => {
    opts.onStage?.(stage);
    c.logger.debug({ stage }, 'worker starting');
  };
  const cfg = c.config;
  // Before the workers: a port already taken stops the start before any job is taken.
  if (cfg.WORKER_METRICS_PORT !== undefined) at('metrics-port');
  const metricsServer = cfg.WORKER_METRICS_PORT === undefined ? undefined : await startMetricsServer(c.metrics.registry, cfg.WORKER_METRICS_PORT, c.logger, cfg.WORKER_METRICS_HOST);
  const closeMetrics = async () => {
    metricsServer?.closeAllConnections();
    await new Promise((r) => (metricsServer ? metricsServer.close(r) : r(undefined)));
  };
  if (signal?.aborted) {
    await closeMetrics();
    signal.throwIfAborted();
  }
  const connection = createRedis(cfg.REDIS_URL, 'worker', workerConnectionName(c.instanceId));
  // A cap off (0) takes no slot; both off: no Redis command is added to a delivery's path, and no look for lost promotions.
  const deliverySlots = cfg.WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT > 0 || cfg.WEBHOOK_MAX_IN_FLIGHT_PER_TENANT > 0 ? webhookSlots(cfg, connection, c.metrics) : undefined;
  const webhookLook = webhookLostPromotions(deliverySlots, { queue: () => c.queues.get(WEBHOOK_QUEUE)!, logger: c.logger });
  const executor = new StepExecutor({
    orm: c.orm,
    runtime: c.runtime,
    logger: c.logger,
    workerId: c.instanceId,
    leaseMs: cfg.WORKER_LOCK_DURATION,
    maxCrashes: cfg.STEP_MAX_CRASHES,
    connectedWorkers: () => connectedWorkers(connection),
    onStepDone: ({ workflow, step, seconds, replayed }) => c.metrics.stepDuration.observe({ workflow, step, replayed: String(replayed) }, seconds),
    onStepFailed: (f) => c.metrics.stepFailures.inc(f),
    onDeferred: ({ workflow, version }) => c.metrics.deferredJobs.inc({ workflow, version: String(version ?? 'unknown') }),
    onFailedHookFailed: ({ workflow }) => c.metrics.onFailedErrors.inc({ workflow }),
  });
  const settings = {
    concurrency: cfg.WORKER_CONCURRENCY,
    lockDurationMs: cfg.WORKER_LOCK_DURATION,
    stalledIntervalMs: cfg.WORKER_STALLED_INTERVAL,
    maxStalledCount: cfg.WORKER_MAX_STALLED_COUNT,
  };
  const host = startWorkers({
    runtime: c.runtime,
    executor,
    handlers: {
      ...c.jobHandlers(),
      ...maintenanceHandlers({ orm: c.orm, idempotency: c.idempotency, logger: c.logger, runRetentionMs: cfg.RUN_RETENTION, runsDeleted: c.metrics.runsDeleted, webhookDeliveriesDeleted: c.metrics.webhookDeliveriesDeleted, maintenanceQueue: () => c.queues.get(MAINTENANCE_QUEUE) }),
      ...webhookHandlers({
        orm: c.orm,
        logger: c.logger,
        settings: { timeoutMs: cfg.WEBHOOK_TIMEOUT, maxAttempts: cfg.WEBHOOK_MAX_ATTEMPTS, retryBaseMs: cfg.WEBHOOK_RETRY_BASE, policy: webhookUrlPolicy(cfg), resolver: webhookResolver(cfg), disableAfterMs: cfg.WEBHOOK_DISABLE_AFTER },
        queue: () => c.queues.get(WEBHOOK_QUEUE)!,
        redis: c.redis,
        outcomes: c.metrics.webhookDeliveries,
        autoDisabled: c.metrics.webhookEndpointsAutoDisabled,
        // A pending delivery overdue by this much has lost its job (Redis flushed): the sweeper's own patience.
        redeliverAfterMs: cfg.SWEEPER_MIN_AGE,
        // Per endpoint (rate_limit_per_second): an endpoint without one sends no rate command to Redis.
        rates: { limits: new EndpointRates(connection, cfg.QUEUE_PREFIX), onRateLimited: () => c.metrics.webhookDeliveriesRateLimited.inc(), onTestAhead: () => c.metrics.webhookTestEventsAhead.inc() },
        ...(deliverySlots ? { webhookSlots: deliverySlots } : {}),
      }),
    },
    connection,
    prefix: cfg.QUEUE_PREFIX,
    settings,
    logger: c.logger,
    telemetry: c.telemetry,
    // Every worker serves the maintenance and webhook queues, whatever WORKER_QUEUES says.
    queues: [...new Set([...c.servedQueues, MAINTENANCE_QUEUE, WEBHOOK_QUEUE])],
    // And the timers queue, with its own concurrency: an SLA timer that comes due never waits behind a
    // run queue's backlog, nor for a run job's slot or a tenant's (ADR 0015).
    timers: { queues: [TIMER_QUEUE], concurrency: cfg.WORKER_TIMER_CONCURRENCY },
    // Off (0): no tenant slot is taken, and no Redis command is added to a run job's path.
    ...(cfg.WORKER_MAX_ACTIVE_RUNS_PER_TENANT > 0
      ? {
          tenantSlots: {
            // A lease of three lock durations: renewed every half lock duration, a SIGKILLed holder's slot lapses within seconds.
            slots: new TenantSlots(connection, { prefix: cfg.QUEUE_PREFIX, cap: cfg.WORKER_MAX_ACTIVE_RUNS_PER_TENANT, leaseMs: 3 * cfg.WORKER_LOCK_DURATION }),
            onParked: ({ workflow }: { workflow: string }) => c.metrics.parkedJobs.inc({ workflow }),
            onRecovered: (how: LostPromotion) => c.metrics.lostPromotionsRecovered.inc({ jobs: 'runs', how }),
          },
        }
      : {}),
    // The webhook deliveries' lost promotions on the same look, every RECOVER_EVERY_MS (ADR 0012, *Lost promotions*).
    ...(webhookLook ? { lostPromotions: [webhookLook] } : {}),
  });
  const workers = host.workers;
  let maintenance;
  try {
    // Once Redis is reachable, its run-retention decision recorded in PostgreSQL, then copied to the
    // scheduler (ADR 0011); scheduleMaintenance says where it is through `onStage`.
    // Not raced against `signal`: it stops by itself (scheduleMaintenance), and a statement left in
    // flight while the container closes its ORM broke the transaction and held the pool's close until
    // the hard deadline (exit 1).
    maintenance = await scheduleMaintenance({
      connection: c.redis,
      prefix: cfg.QUEUE_PREFIX,
      logger: c.logger,
      runRetentionMs: cfg.RUN_RETENTION,
      webhookRedeliveryMs: cfg.WEBHOOK_REDELIVERY_INTERVAL,
      scheduledBy: c.instanceId,
      orm: c.orm,
      onStage: at,
      ...(signal ? { signal } : {}),
    });
  } catch (err) {
    await host.stop(cfg.WORKER_SHUTDOWN_GRACE);
    connection.disconnect();
    await closeMetrics();
    throw err;
  }
  // The operators' active-run overrides (ADR 0014): Redis's copy re-seeded from PostgreSQL, which holds
  // them, at every start, after Redis lost its data (below), and every SWEEPER_INTERVAL — so a copy that
  // missed a change (an API that died between its commit and its HSET, a re-seed that raced a PUT) is
  // right again within one interval. A failure leaves the copy as it is until the next.
  const seedOverrides = async (level: 'info' | 'debug' = 'info') => {
    if (cfg.WORKER_MAX_ACTIVE_RUNS_PER_TENANT <= 0) return;
    try {
      const overrides = await seedActiveRunOverrides(c.orm, c.redis, cfg.QUEUE_PREFIX);
      c.logger[level]({ overrides }, "tenants' active-run overrides copied to Redis");
    } catch (err) {
      c.logger.warn({ err }, "could not copy the tenants' active-run overrides to Redis: the copy there applies until the next re-seed");
    }
  };
  await seedOverrides();
  const reseeding = setInterval(() => void seedOverrides('debug'), cfg.SWEEPER_INTERVAL);
  reseeding.unref();
  // Replaced before the old one closes: a retention pass queuing its follow-up meanwhile finds an open queue.
  const replaced = c.queues.get(MAINTENANCE_QUEUE);
  c.queues.set(MAINTENANCE_QUEUE, maintenance);
  await replaced?.close();
  const sweeper = new Sweeper({
    orm: c.orm,
    runtime: c.runtime,
    redis: c.redis,
    logger: c.logger,
    // One sweeper at a time per set of registered workflow versions: while workers of another set run
    // beside these (a rolling deploy, workers kept to drain an old version), each set sweeps the runs
    // it can carry on, so no run is left to a sweeper that must skip it (ADR 0008). Redis's loss is
    // noticed once, whoever sweeps first.
    lockKey: `${cfg.QUEUE_PREFIX}:sweeper-lock:${createHash('sha256').update(c.runtime.workflows.labels().join(',')).digest('hex').slice(0, 12)}`,
    markerKey: `${cfg.QUEUE_PREFIX}:sweeper-lock:marker`,
    intervalMs: cfg.SWEEPER_INTERVAL,
    minAgeMs: cfg.SWEEPER_MIN_AGE,
    // A flushed or replaced Redis lost the Job Schedulers too: put them back (the run-retention one as
    // the worker started last decided it, which PostgreSQL holds, not as this worker would: ADR 0011).
    // The overrides' copy went too: re-seeded from PostgreSQL.
    afterRedisLoss: async () => {
      await seedOverrides();
      await restoreMaintenanceSchedulers(maintenance, { runRetentionMs: cfg.RUN_RETENTION, webhookRedeliveryMs: cfg.WEBHOOK_REDELIVERY_INTERVAL, logger: c.logger, scheduledBy: c.instanceId, orm: c.orm });
    },
    // And at every sweep: a run-retention scheduler lost alone (keys lost one by one, a snapshot restored,
    // the marker kept) or holding an older decision is made the recorded decision's copy again; the
    // standing schedulers are put back when gone (the worker that noticed the loss may have died before
    // its repair, the marker set) or on another schedule (changed in Redis by hand).
    eachSweep: async () => {
      const gone = await repairStandingSchedulers(maintenance, { webhookRedeliveryMs: cfg.WEBHOOK_REDELIVERY_INTERVAL });
      if (gone.length) c.logger.warn({ schedulers: gone }, "maintenance schedulers put back: Redis had lost them (and the repair after its loss did not run), or held another schedule than this worker's settings");
      await repairRunRetentionSchedule(maintenance, c.orm, { logger: c.logger });
    },
  });
  sweeper.start();
  warnWhenGuardOff(c.logger, cfg.WEBHOOK_ALLOW_PRIVATE_NETWORKS);
  warnWhenTlsVerificationOff(c.logger, cfg.NODE_ENV);
  // Redis is reachable by now (the maintenance schedulers are in it): one CONFIG GET, on the producer connection.
  await warnWhenIdleTimeout(c.redis, c.logger);
  // Its pool declared beside the other processes' under QUEUE_PREFIX, and their sum checked against
  // max_connections now and every heartbeat: one warning when over (docs/runbook.md, Connection budget).
  // Not awaited: a slow or refusing Redis or PostgreSQL never holds the start.
  c.startConnectionBudget();
  // The worker cannot see the API's list: said once at start, where a mismatch is looked for first (ADR 0008).
  if (cfg.WORKFLOW_VERSIONS_RETIRED.length) {
    c.logger.warn(
      { workflow_versions_retired: cfg.WORKFLOW_VERSIONS_RETIRED, registered: c.runtime.workflows.labels() },
      'this worker fails every run of the workflow versions it declares retired (WORKFLOW_VERSIONS_RETIRED): the API must declare the same list, or it still starts or retries runs of them that fail here',
    );
  }
  c.logger.info({ queues: workers.map((w) => w.name), ...settings, timer_concurrency: cfg.WORKER_TIMER_CONCURRENCY, max_active_runs_per_tenant: cfg.WORKER_MAX_ACTIVE_RUNS_PER_TENANT, webhook_max_in_flight_per_endpoint: cfg.WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT, webhook_max_in_flight_per_tenant: cfg.WEBHOOK_MAX_IN_FLIGHT_PER_TENANT, instance: c.instanceId }, 'worker started');
  return {
    workers,
    sweeper,
    async stop() {
      // The workers stop taking jobs at once: a sweep in progress (which stop waits for) must not
      // keep them taking new jobs and starting next steps meanwhile.
      clearInterval(reseeding);
      await Promise.all([host.stop(cfg.WORKER_SHUTDOWN_GRACE), sweeper.stop()]);
      connection.disconnect();
      await closeMetrics();
    },
  };
}

/**
 * The webhook deliveries' caps on attempts in flight that are on (ADR 0013): per endpoint and per tenant.
 * Held only during the POST, which WEBHOOK_TIMEOUT bounds, so not renewed: a lease outlives the longest
 * attempt by three lock durations, and a SIGKILLed holder's slots lapse that long after its attempt would have timed out.
 */
function webhookSlots(cfg: Config, connection: Redis, metrics: Metrics): WebhookSlotsUse {
  const lease = (per: 'endpoint' | 'webhook-tenant', cap: number) => (cap > 0 ? new TenantSlots(connection, { prefix: cfg.QUEUE_PREFIX, per, cap, leaseMs: cfg.WEBHOOK_TIMEOUT + 3 * cfg.WORKER_LOCK_DURATION }) : undefined);
  const endpoint = lease('endpoint', cfg.WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT);
  const tenant = lease('webhook-tenant', cfg.WEBHOOK_MAX_IN_FLIGHT_PER_TENANT);
  return {
    ...(endpoint ? { endpoint } : {}),
    ...(tenant ? { tenant } : {}),
    onParked: () => metrics.webhookDeliveriesParked.inc(),
    onRecovered: (how) => metrics.lostPromotionsRecovered.inc({ jobs: 'webhooks', how }),
  };
}
