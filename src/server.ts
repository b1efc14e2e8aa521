import { loadConfig } from './platform/config/config.ts';
import { createContainer } from './container.ts';
import { createApp } from './app.ts';
import { onShutdown } from './platform/process/shutdown.ts';

const config = loadConfig();
const container = await createContainer(config, { service: 'api' });
const server = createApp(container).listen(config.PORT, () => {
  const addr = server.address();
  container.logger.info({ port: typeof addr === 'object' && addr ? addr.port : config.PORT }, 'api listening');
});
server.keepAliveTimeout = 65_000;
onShutdown(container.logger, config.WORKER_SHUTDOWN_GRACE, async () => {
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await container.close();
});
