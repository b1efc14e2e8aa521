import express, { type Express } from 'express';
import type { Container } from './container.ts';
import { correlationMiddleware } from './platform/http/correlation.ts';
import { notFoundHandler, problemHandler } from './platform/http/problem.middleware.ts';
import { liveness, readiness } from './platform/http/health.ts';
import { buildRouter } from './platform/http/router.ts';
import { metricsHandler } from './platform/http/metrics.route.ts';
import { httpLogger } from './platform/telemetry/http-logger.ts';
import { operatorDashboard, setBoardQueues } from './platform/http/admin-board.ts';
import { openApiHandlers } from './platform/http/openapi.route.ts';
import { loadShedding } from './platform/http/load-shed.ts';
import { routeLabelOf, type RefusalReason } from './platform/http/refusals.ts';
import { methodNotAllowed, optionsAllow } from './platform/http/method-not-allowed.ts';
import { readETags } from './platform/http/etag.ts';
import { connectionShareOf, TenantConnectionShare } from './platform/http/tenant-db-share.ts';
import { poolMaxFor } from './platform/config/config.ts';
import { CONNECTION_BOUNDS } from './platform/db/connection-bounds.ts';

/**
 * The operational endpoints outside the route declarations (GET only): another method on one of them
 * is a 405 with `Allow`, and `OPTIONS` a 204, as for the API's own routes (docs/api.md, "Status codes").
 */
const OPERATIONAL_PATHS = ['/healthz', '/readyz', '/metrics', '/openapi.json', '/docs'] as const;

/** Middleware order and routers, nothing else. */
export function createApp(c: Container): Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('trust proxy', c.config.TRUST_PROXY);
  app.set('query parser', 'simple');
  // Express's weak ETags, the same bytes, computed more cheaply, and on a read's 2xx only (etag.ts):
  // Express's own would be on every answer, a write's and a problem's too.
  app.set('etag', false);
  app.use(correlationMiddleware);
  app.use(httpLogger(c.logger));
  // After correlationMiddleware: a middleware span that ends before the request's correlation id is
  // known would miss it (tracing.test.ts, "every span … carries the correlation id").
  app.use(readETags);
  const refused = (reason: RefusalReason, route: string) => c.metrics.requestsRefused.inc({ reason, route });
  const shedRoute = routeLabelOf(c.routes);
  app.use(loadShedding(c.config.API_MAX_INFLIGHT, (req) => refused('load_shed', shedRoute(req.method, req.path))));
  // Operator dashboard (it parses its own requests); admin-auth guards all of it. The API's routes read
  // their JSON bodies after authentication (router.ts).
  const dashboard = operatorDashboard({ queues: c.queues.values(), verifier: c.verifier, logger: c.logger, redis: c.redis, config: c.config });
  setBoardQueues(app, dashboard.queueNames);
  app.use(dashboard.path, ...dashboard.handlers);
  app.get('/healthz', liveness);
  app.get('/readyz', readiness({ orm: c.orm, redis: c.redis, logger: c.logger, stopping: () => c.lifecycle.stopping, revocations: c.revocations, queues: c.queues.values() }));
  app.get('/metrics', metricsHandler(c));
  const openapi = openApiHandlers(c.routes, c.logger);
  app.get('/openapi.json', openapi.json);
  app.get('/docs', openapi.docs);
  const answered = [...c.routes, ...OPERATIONAL_PATHS.map((path) => ({ method: 'get', path }))];
  app.use(optionsAllow(answered));
  // A tenant's share of this process's pool (ADR 0012, amendment): a request past it waits for a place
  // no longer than one waits for a pooled connection.
  const share = connectionShareOf(c.config.API_MAX_DB_CONNECTIONS_PER_TENANT, poolMaxFor(c.config, 'api', 0));
  app.use(
    buildRouter(c.routes, {
      orm: c.orm,
      verifier: c.verifier,
      idempotency: c.idempotency,
      logger: c.logger,
      bodyLimit: c.config.BODY_LIMIT,
      maxInFlightPerTenant: c.config.API_MAX_INFLIGHT_PER_TENANT,
      onRefused: refused,
      ...(share ? { connectionShare: new TenantConnectionShare(share, CONNECTION_BOUNDS.connectionTimeoutMillis) } : {}),
      refuseToken: dashboard.refuseToken,
      idempotencyMetrics: { replays: c.metrics.idempotencyReplays, conflicts: c.metrics.idempotencyConflicts },
    }),
  );
  app.use(methodNotAllowed(answered));
  app.use(notFoundHandler);
  app.use(problemHandler(c.logger));
  return app;
}
