import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { Queue, type Telemetry } from 'bullmq';
import type { Redis } from 'ioredis';
import { apiConfigProblems, ConfigError, poolMaxFor, type Config } from './platform/config/config.ts';
import { createOrm, type MikroORM } from './platform/db/orm.ts';
import { ConnectionBudget } from './platform/db/connection-budget.ts';
import { createLogger, type Logger } from './platform/telemetry/logger.ts';
import { createRedis } from './platform/queue/connections.ts';
import { warnOnQueueErrors } from './platform/queue/queue-errors.ts';
import { createTokenVerifier, type TokenVerifier } from './platform/tenancy/jwt.ts';
import { IdempotencyService } from './platform/idempotency/idempotency.service.ts';
import { DurableRuntime, keepFromConfig } from './platform/durable/runtime.ts';
import type { RouteDef } from './platform/http/route.ts';
import type { WorkflowDef } from './platform/durable/workflow.ts';
import { entities } from './entities.ts';
import { jobHandlersFor, routesFor, workflowsFor } from './modules/index.ts';
import { createMetrics, type Metrics } from './platform/telemetry/metrics.ts';
import { AdmissionController } from './platform/http/admission.ts';
import { bullmqTelemetry } from './platform/telemetry/bullmq-telemetry.ts';
import { MAINTENANCE_QUEUE } from './platform/queue/maintenance.ts';
import { TIMER_QUEUE } from './platform/queue/timers.ts';
import { servedRunQueues } from './platform/durable/worker-host.ts';
import { WorkflowRegistry } from './platform/durable/registry.ts';
import { trustProxyProblems } from './platform/http/trust-proxy.ts';
import { WEBHOOK_QUEUE, enqueueDeliveries } from './platform/webhooks/delivery.ts';
import { webhookEndpointRoutes } from './platform/webhooks/webhook-endpoints.routes.ts';
import { EndpointRates } from './platform/webhooks/rate-limit.ts';
import { webhookDeliveryRoutes } from './platform/webhooks/deliveries.routes.ts';
import { operatorLimitsRoutes } from './platform/limits/operator-limits.routes.ts';
import { publishActiveRunsOverride } from './platform/limits/tenant-limits.ts';
import { webhookResendRoutes } from './platform/webhooks/resend.ts';
import { RESEND_BUDGET_WINDOW_MS } from './platform/webhooks/resend-budget.ts';
import { SlidingBudget } from './platform/http/rate-window.ts';
import { webhookTestEventRoutes } from './platform/webhooks/test-event.ts';
import type { UrlPolicy } from './platform/webhooks/ssrf.ts';
import { HostResolver } from './platform/webhooks/resolve.ts';
import { TokenRevocations, tokenMaxAgeSeconds } from './platform/tenancy/token-revocations.ts';

/** Which webhook receivers the configuration admits (the SSRF guard, ADR 0013). */
export const webhookUrlPolicy = (config: Config): UrlPolicy => ({ allowPrivate: config.WEBHOOK_ALLOW_PRIVATE_NETWORKS, httpsOnly: config.NODE_ENV === 'production' });
/** How a process resolves webhook receivers' hosts (resolve.ts): WEBHOOK_DNS_SERVERS, bounded by WEBHOOK_DNS_TIMEOUT and WEBHOOK_TIMEOUT. */
export const webhookResolver = (config: Config): HostResolver => new HostResolver({ servers: config.WEBHOOK_DNS_SERVERS, timeoutMs: Math.min(config.WEBHOOK_DNS_TIMEOUT, config.WEBHOOK_TIMEOUT) });

export interface Container {
  config: Config;
  logger: Logger;
  orm: MikroORM;
  redis: Redis;
  queues: Map<string, Queue>;
  runtime: DurableRuntime;
  idempotency: IdempotencyService;
  verifier: TokenVerifier;
  /** The API's copy of the token revocation list (ADR 0018), loading once createContainer returns (503 to every token until loaded); none elsewhere. */
  revocations: TokenRevocations | undefined;
  workflows: WorkflowDef[];
  /** The workflow queues this process's workers take jobs from (a worker: WORKER_QUEUES, else every workflow's; others: none). */
  servedQueues: string[];
  routes: RouteDef[];
  metrics: Metrics;
  /** BullMQ OpenTelemetry adapter, set only while the OTel SDK runs (pass it to every Queue, FlowProducer and Worker). */
  telemetry: Telemetry | undefined;
  instanceId: string;
  /** Set at the API's SIGTERM (server.ts): /readyz then answers 503 while the API still serves (API_SHUTDOWN_DELAY). */
  lifecycle: { stopping: boolean };
  jobHandlers(): ReturnType<typeof jobHandlersFor>;
  /**
   * Declares this process's pool (poolMaxFor) under QUEUE_PREFIX and, now and every heartbeat, warns
   * once when the live processes' pools add up to more than PostgreSQL allows (connection-budget.ts).
   * The API's start calls it once Redis is ready, a worker's once its schedulers are in Redis; close()
   * withdraws the declaration first. A tool's container declares nothing (its pool is not the deployment's).
   */
  startConnectionBudget(): void;
  close(): Promise<void>;
}

/** The one composition root: config in, every long-lived object out. Entry points stay thin. */
export async function createContainer(
  config: Config,
  opts: {
    service: 'api' | 'worker' | 'tool';
    extraWorkflows?: WorkflowDef[];
    /** Replaces the modules' workflow definitions (e.g. a test's process with other versions of them); extraWorkflows still follow. */
    workflows?: (fromModules: WorkflowDef[]) => WorkflowDef[];
  },
): Promise<Container> {
  // The settings checked here, not by the schema, before anything connects: all of them reported at once in one
  // ConfigError (exitOnConfigError prints them), as the schema's are, not the first alone one start at a time.
  // Settings only the API (and the readiness tool's app) reads: TRUST_PROXY, and the API's share against its pool.
  const problems = opts.service === 'worker' ? [] : [...trustProxyProblems(config.TRUST_PROXY), ...(opts.service === 'api' ? apiConfigProblems(config) : [])];
  const logger = createLogger({ level: config.LOG_LEVEL, name: `dealix-${opts.service}` });
  // The SLA scheduler's queues (timers, and the golden-path queue of older releases' timers) are created lazily (below), once Redis is connected.
  const fromModules = workflowsFor(config, { queue: (name) => queue(name) });
  const workflows = [...(opts.workflows ? opts.workflows(fromModules) : fromModules), ...(opts.extraWorkflows ?? [])];
  // A worker's default pool counts the workflow queues it serves (WORKER_QUEUES, else all) and its timers (poolMaxFor).
  const servedQueues = opts.service === 'worker' ? collectProblems(problems, () => servedRunQueues(workflows, config.WORKER_QUEUES), []) : [];
  // WORKFLOW_VERSIONS_RETIRED against the workflows (the runtime's registry checks it again below): here, before
  // anything connects, so a refusal leaves no connection open behind it (npm run readiness reports it and goes on).
  collectProblems(problems, () => new WorkflowRegistry(workflows, config.WORKFLOW_VERSIONS_RETIRED), undefined);
  if (problems.length) throw new ConfigError(problems);
  const poolMax = poolMaxFor(config, opts.service, servedQueues.length);
  const orm = await createOrm(config, { entities, poolMax });
  const redis = createRedis(config.REDIS_URL, 'producer', `dealix-${opts.service}`);
  const telemetry = bullmqTelemetry();
  const queueOpts = { connection: redis, prefix: config.QUEUE_PREFIX, ...(telemetry ? { telemetry } : {}) };
  const queues = new Map<string, Queue>();
  const queue = (name: string) => {
    let q = queues.get(name);
    if (!q) {
      q = new Queue(name, queueOpts);
      // Without a listener BullMQ prints each connection error as a stack trace; with Redis down, one warning per 10 s per queue.
      warnOnQueueErrors(q, name, logger);
      queues.set(name, q);
    }
    return q;
  };
  for (const wf of workflows) queue(wf.queue);
  // Bull Board and /metrics show the maintenance queue too (its scheduler is upserted by workers).
  queue(MAINTENANCE_QUEUE);
  // Timers a waiting run depends on (SLA timers): scheduled by workers, removed by the API's decisions and cancels (ADR 0015).
  queue(TIMER_QUEUE);
  // Webhook deliveries are enqueued by whichever process committed them (API: a cancel; worker: a run's end).
  queue(WEBHOOK_QUEUE);
  const webhooks = { dispatch: (tenantId: string, ids: readonly string[]) => enqueueDeliveries(queue(WEBHOOK_QUEUE), tenantId, ids) };
  const runtime = new DurableRuntime({ workflows, queues, logger, keep: keepFromConfig(config), webhooks, retired: config.WORKFLOW_VERSIONS_RETIRED });
  const idempotency = new IdempotencyService({ ttlMs: config.IDEMPOTENCY_TTL, leaseMs: config.IDEMPOTENCY_LEASE });
  // Only the API checks tokens against the revocation list; its start (below) loads it from PostgreSQL (Redis not needed).
  const instanceId = `${hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`;
  // It declares the token age it enforces before its first load (token_age_limits): the prune goes by the longest declared.
  const revocations =
    opts.service === 'api'
      ? new TokenRevocations({
          orm,
          redisUrl: config.REDIS_URL,
          prefix: config.QUEUE_PREFIX,
          logger,
          reconcileMs: config.TOKEN_REVOCATION_RECONCILE,
          tokenAge: { instance: instanceId, maxAgeSeconds: tokenMaxAgeSeconds({ maxTokenLifetimeMs: config.JWT_MAX_TOKEN_LIFETIME, clockToleranceMs: config.JWT_CLOCK_TOLERANCE }) },
        })
      : undefined;
  const verifier = createTokenVerifier(config, undefined, logger, revocations);
  const metrics = createMetrics(opts.service);
  const admission = new AdmissionController({ redis, prefix: config.QUEUE_PREFIX, perMinute: config.RATE_LIMIT_PER_MINUTE, maxInFlight: config.MAX_RUNS_IN_FLIGHT_PER_TENANT });
  // One hourly budget of requested sends per tenant (WEBHOOK_RESEND_MAX_PER_HOUR): resends and test events spend from it.
  const resendBudget = { window: new SlidingBudget(redis, `${config.QUEUE_PREFIX}:webhook-resend`, RESEND_BUDGET_WINDOW_MS), maxPerHour: config.WEBHOOK_RESEND_MAX_PER_HOUR };
  const routes = [
    ...routesFor({ config, runtime, queue, admission, onRunRetried: (workflow) => metrics.runsRetried.inc({ workflow }) }),
    ...webhookEndpointRoutes({
      policy: webhookUrlPolicy(config),
      maxEndpoints: config.WEBHOOK_MAX_ENDPOINTS,
      resolver: webhookResolver(config),
      rates: { limits: new EndpointRates(redis, config.QUEUE_PREFIX), queue: () => queue(WEBHOOK_QUEUE) },
    }),
    ...webhookDeliveryRoutes(),
    ...webhookResendRoutes({
      queue: () => queue(WEBHOOK_QUEUE),
      maxPendingResent: config.WEBHOOK_RESEND_MAX_PENDING,
      budget: resendBudget,
      onResent: (mode, count) => metrics.webhookDeliveriesResent.inc({ mode }, count),
    }),
    ...webhookTestEventRoutes({ queue: () => queue(WEBHOOK_QUEUE), onSent: () => metrics.webhookTestEvents.inc(), budget: resendBudget }),
    ...operatorLimitsRoutes({
      defaults: { maxActiveRuns: config.WORKER_MAX_ACTIVE_RUNS_PER_TENANT, maxRunsInFlight: config.MAX_RUNS_IN_FLIGHT_PER_TENANT },
      publishActiveRuns: (tenantId, cap) => publishActiveRunsOverride(redis, config.QUEUE_PREFIX, tenantId, cap),
    }),
  ];
  let budget: ConnectionBudget | undefined;
  const close = async () => {
    // First, while Redis is still connected: the deployment's sum no longer counts this process.
    await budget?.stop();
    await revocations?.close();
    await Promise.allSettled([...queues.values()].map((q) => q.close()));
    await orm.close(true).catch(() => {});
    redis.disconnect();
  };
  // Fail-closed (ADR 0018): until the list is loaded, every token is answered 503 (never let through unchecked).
  if (revocations) await revocations.start();
  const container: Container = {
    config,
    logger,
    lifecycle: { stopping: false },
    orm,
    redis,
    queues,
    runtime,
    idempotency,
    verifier,
    revocations,
    workflows,
    servedQueues,
    routes,
    metrics,
    telemetry,
    instanceId,
    jobHandlers: () =>
      jobHandlersFor({
        orm,
        runtime,
        logger,
        noRequestDeferrals: config.SLA_NO_REQUEST_DEFERRALS,
        onNoRequestSpent: () => metrics.slaTimersSpent.inc(),
        onDeferred: ({ workflow, version }) => metrics.deferredJobs.inc({ workflow, version: String(version ?? 'unknown') }),
      }),
    startConnectionBudget() {
      if (opts.service === 'tool' || budget) return;
      // The container's logger when started (a test stack replaces it after createContainer).
      budget = new ConnectionBudget({ redis, orm, prefix: config.QUEUE_PREFIX, logger: container.logger, declaration: { service: opts.service, instance: instanceId, pool: poolMax } });
      budget.start();
    },
    close,
  };
  return container;
}

/** `check()`'s value, or, when it throws a ConfigError, `fallback` with its problems added to `problems` (any other error is thrown). */
function collectProblems<T>(problems: string[], check: () => T, fallback: T): T {
  try {
    return check();
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    problems.push(...e.problems);
    return fallback;
  }
}
