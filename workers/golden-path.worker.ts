import { loadConfig } from '../src/platform/config/config.ts';
import { createContainer } from '../src/container.ts';
import { startWorkerProcess } from '../src/worker-runtime.ts';
import { onShutdown } from '../src/platform/process/shutdown.ts';

const config = loadConfig();
const container = await createContainer(config, { service: 'worker' });
const worker = await startWorkerProcess(container);
onShutdown(container.logger, config.WORKER_SHUTDOWN_GRACE, async () => {
  await worker.stop();
  await container.close();
});
