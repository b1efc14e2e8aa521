import express, { type Express } from 'express';
import { pinoHttp } from 'pino-http';
import type { Container } from './container.ts';
import { correlationMiddleware } from './platform/http/correlation.ts';
import { notFoundHandler, problemHandler } from './platform/http/problem.middleware.ts';
import { liveness, readiness } from './platform/http/health.ts';
import { buildRouter } from './platform/http/router.ts';
import { metricsHandler } from './platform/http/metrics.route.ts';

/** Middleware order and routers, nothing else. */
export function createApp(c: Container): Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('trust proxy', 'loopback');
  app.set('query parser', 'simple');
  app.use(correlationMiddleware);
  app.use(
    pinoHttp({
      logger: c.logger,
      genReqId: (_req, res) => res.getHeader('X-Request-Id') as string,
      customLogLevel: (_req, res, err) => (err || res.statusCode >= 500 ? 'error' : res.statusCode >= 400 ? 'warn' : 'info'),
      autoLogging: { ignore: (req) => req.url === '/healthz' || req.url === '/metrics' },
    }),
  );
  app.use(express.json({ limit: c.config.BODY_LIMIT, strict: true, type: ['application/json', 'application/*+json'] }));
  app.get('/healthz', liveness);
  app.get('/readyz', readiness({ orm: c.orm, redis: c.redis }));
  app.get('/metrics', metricsHandler(c));
  app.use(
    buildRouter(c.routes, {
      orm: c.orm,
      verifier: c.verifier,
      idempotency: c.idempotency,
      logger: c.logger,
      idempotencyMetrics: { replays: c.metrics.idempotencyReplays, conflicts: c.metrics.idempotencyConflicts },
    }),
  );
  app.use(notFoundHandler);
  app.use(problemHandler(c.logger));
  return app;
}
