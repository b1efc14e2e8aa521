import { createServer } from 'node:http';
import { loadConfig, usesPublishedJwtSecret } from './platform/config/config.ts';
import { createContainer } from './container.ts';
import { createApp } from './app.ts';
import { drainOnClose, onShutdown } from './platform/process/shutdown.ts';
import { untilReady } from './platform/queue/connections.ts';

const config = loadConfig();
const container = await createContainer(config, { service: 'api' });
await untilReady(container.redis, 5_000);
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
const drain = drainOnClose(server, config.WORKER_SHUTDOWN_GRACE);
server.listen(config.PORT, () => {
  const addr = server.address();
  container.logger.info({ port: typeof addr === 'object' && addr ? addr.port : config.PORT }, 'api listening');
  if (usesPublishedJwtSecret(config)) {
    container.logger.warn({ security_event: 'published_jwt_secret' }, 'JWT_SECRET is the example from .env.example / docker-compose.yml: anyone can sign tokens for any tenant; do not expose this API');
  }
});
onShutdown(container.logger, config.WORKER_SHUTDOWN_GRACE, async () => {
  await drain();
  await container.close();
});
