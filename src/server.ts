import { createServer } from 'node:http';
import { installEarlySignals } from './platform/process/early-signals.ts';

// First, before the heavy imports: a SIGTERM while the API is still starting (loading, connecting,
// waiting for Redis) ends the start with exit 0 and one log line, not a kill by the signal (early-signals.ts).
installEarlySignals();
const { exitOnConfigError, loadConfig, usesPublishedJwtSecret } = await import('./platform/config/config.ts');
const { createContainer } = await import('./container.ts');
const { createApp } = await import('./app.ts');
const { drainOnClose, exitAfterFailedStart, notReadyFor, onShutdown } = await import('./platform/process/shutdown.ts');
const { untilReady } = await import('./platform/queue/connections.ts');
const { warnWhenGuardOff } = await import('./platform/webhooks/ssrf.ts');
const { warnWhenTlsVerificationOff } = await import('./platform/process/tls-verification.ts');
const { answerClientError } = await import('./platform/http/client-error.ts');

const config = loadConfig();
const container = await createContainer(config, { service: 'api' }).catch(exitOnConfigError);
await untilReady(container.redis, 5_000);
// Its pool declared under QUEUE_PREFIX, the deployment's sum checked against max_connections (docs/runbook.md, Connection budget).
container.startConnectionBudget();
// Before 'api listening' (a start's lines are read up to it): readiness row webhook-ssrf-guard.
warnWhenGuardOff(container.logger, config.WEBHOOK_ALLOW_PRIVATE_NETWORKS);
// Readiness row tls-verification: NODE_TLS_REJECT_UNAUTHORIZED=0 in production.
warnWhenTlsVerificationOff(container.logger, config.NODE_ENV);
// A request counts against API_MAX_INFLIGHT while its body arrives: a client trickling bodies must not
// hold the slots for Node's default of five minutes (checked every second, not every 30 s).
const server = createServer(
  {
    requestTimeout: config.API_REQUEST_TIMEOUT,
    headersTimeout: Math.min(config.API_REQUEST_TIMEOUT, 20_000),
    connectionsCheckingInterval: 1000,
    keepAliveTimeout: 65_000,
  },
  createApp(container),
);
// What Node's HTTP parser refuses (431, 400, 408) is answered problem+json too, not with a bare status line.
server.on('clientError', answerClientError(container.logger));
const drain = drainOnClose(server, config.WORKER_SHUTDOWN_GRACE);
// The port taken (or not ours to bind): one log line and exit 1, as a worker's start failure. Unhandled,
// the listen error was Node's bare stack trace after the connections had been opened, never closed.
const listenFailed = (err: Error) => {
  container.logger.fatal({ err, port: config.PORT, host: config.API_HOST }, 'api could not start');
  exitAfterFailedStart(container.logger, () => container.close());
};
server.once('error', listenFailed);
server.listen({ port: config.PORT, ...(config.API_HOST ? { host: config.API_HOST } : {}) }, () => {
  server.off('error', listenFailed);
  const addr = server.address();
  container.logger.info({ port: typeof addr === 'object' && addr ? addr.port : config.PORT, address: typeof addr === 'object' && addr ? addr.address : config.API_HOST }, 'api listening');
  if (usesPublishedJwtSecret(config)) {
    container.logger.warn({ security_event: 'published_jwt_secret' }, 'JWT_SECRET is the example from .env.example / docker-compose.yml: anyone can sign tokens for any tenant; do not expose this API');
  }
});
// The hard deadline counts the delay: the drain's grace starts after it.
onShutdown(container.logger, config.API_SHUTDOWN_DELAY + config.WORKER_SHUTDOWN_GRACE, async () => {
  await notReadyFor(() => (container.lifecycle.stopping = true), config.API_SHUTDOWN_DELAY, container.logger);
  container.logger.info({ grace_ms: config.WORKER_SHUTDOWN_GRACE }, 'draining: the listener closes, requests in flight are answered');
  await drain();
  await container.close();
});
