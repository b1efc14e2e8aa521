/**
 * A benchmark API process: the production container and Express app, on an ephemeral port, plus a
 * round-trip counter and one extra route for the overhead measurement: the golden-path POST declared
 * with idempotency 'optional' (same handler, same chain), so a request without a key skips only the
 * idempotency claim and store.
 */
import type { AddressInfo } from 'node:net';
import { installIoCounter } from './lib/io-counter.ts';
import { childChannel } from './lib/child-ipc.ts';
import { ioStats } from './lib/io-stats.ts';
import { loadConfig } from '../../src/platform/config/config.ts';
import { createContainer } from '../../src/container.ts';
import { createApp } from '../../src/app.ts';
import { onShutdown } from '../../src/platform/process/shutdown.ts';
import { GOLDEN_PATH_POST, NO_KEY_POST } from './lib/http-load.ts';

const counter = installIoCounter();
const config = loadConfig();
const container = await createContainer(config, { service: 'api' });
const post = container.routes.find((r) => r.method === 'post' && r.path === GOLDEN_PATH_POST);
if (!post) throw new Error(`no route POST ${GOLDEN_PATH_POST}`);
container.routes.push({ ...post, path: NO_KEY_POST, idempotency: 'optional' });

const channel = childChannel(ioStats(counter));

const server = createApp(container).listen(0, '127.0.0.1', () => {
  channel.ready({ port: (server.address() as AddressInfo).port });
});
server.keepAliveTimeout = 65_000;
onShutdown(container.logger, config.WORKER_SHUTDOWN_GRACE, async () => {
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await container.close();
});
