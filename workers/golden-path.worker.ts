import { loadConfig } from '../src/platform/config/config.ts';
import { createContainer } from '../src/container.ts';
import { runWorkerProcess } from '../src/worker-runtime.ts';

const container = await createContainer(loadConfig(), { service: 'worker' });
await runWorkerProcess(container);
