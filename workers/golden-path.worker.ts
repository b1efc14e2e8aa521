import { exitOnConfigError, loadConfig } from '../src/platform/config/config.ts';
import { createContainer } from '../src/container.ts';
import { runWorkerProcess } from '../src/worker-runtime.ts';

// WORKER_QUEUES is checked against the workflows' queues here: a name that is none stops the worker as any bad setting does.
const container = await createContainer(loadConfig(), { service: 'worker' }).catch(exitOnConfigError);
await runWorkerProcess(container);
