import { installEarlySignals } from '../src/platform/process/early-signals.ts';

// First, before the heavy imports: a SIGTERM while the worker is still starting ends the start with
// exit 0 and one log line instead of killing the process by the signal (early-signals.ts).
installEarlySignals();
const { exitOnConfigError, loadConfig } = await import('../src/platform/config/config.ts');
const { createContainer } = await import('../src/container.ts');
const { runWorkerProcess } = await import('../src/worker-runtime.ts');

// WORKER_QUEUES is checked against the workflows' queues here: a name that is none stops the worker as any bad setting does.
const container = await createContainer(loadConfig(), { service: 'worker' }).catch(exitOnConfigError);
await runWorkerProcess(container);
