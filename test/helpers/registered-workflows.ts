import { parseConfig } from '../../src/platform/config/config.ts';
import { workflowsFor } from '../../src/modules/index.ts';
import type { WorkflowDef } from '../../src/platform/durable/workflow.ts';

/**
 * The workflow definitions the modules register (workflowsFor), in their order: for tests that quote what
 * a process says of them (the WORKER_QUEUES refusal's queues, the readiness row's versions), so a new
 * workflow joins the expected text by itself (docs/runtime.md, *Adding a workflow*). No queue is opened:
 * the modules' queue factory is only called when a timer is scheduled.
 */
export function registeredWorkflows(): WorkflowDef[] {
  return workflowsFor(parseConfig({ JWT_SECRET: 'x'.repeat(32) }), {
    queue: () => {
      throw new Error('registeredWorkflows: no queue is opened here');
    },
  });
}

/** Their queues, once each, as the WORKER_QUEUES refusal lists them ("there are a, b"). */
export const registeredQueues = (): string => [...new Set(registeredWorkflows().map((w) => w.queue))].join(', ');
