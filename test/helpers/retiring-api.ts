import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createContainer } from '../../src/container.ts';
import { createApp } from '../../src/app.ts';
import { parseConfig } from '../../src/platform/config/config.ts';
import type { TestStack } from './stack.ts';
import type { WorkflowDef } from '../../src/platform/durable/workflow.ts';

/**
 * An API instance (and its runtime) of a deployment that declares `retired` (WORKFLOW_VERSIONS_RETIRED,
 * `name@vN,…`; empty: none) retired for good, on `stack`'s database and Redis (its log silent); call it as the stack (`api(it, …)`),
 * and stop it in a `finally`. `workflows` replaces the modules' definitions (createContainer's option: an instance of another release).
 */
export async function retiringApi(stack: TestStack, retired: string, workflows?: (fromModules: WorkflowDef[]) => WorkflowDef[]) {
  const container = await createContainer(parseConfig({ ...stack.env, WORKFLOW_VERSIONS_RETIRED: retired, LOG_LEVEL: 'silent' }), { service: 'api', ...(workflows ? { workflows } : {}) });
  const server = await new Promise<Server>((resolve) => {
    const srv = createApp(container).listen(0, '127.0.0.1', () => resolve(srv));
  });
  return {
    ...stack,
    container,
    baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    async stop() {
      await new Promise((resolve) => server.close(resolve));
      await container.close();
    },
  };
}
