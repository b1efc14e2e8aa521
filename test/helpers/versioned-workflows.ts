import { z } from 'zod';
import { defineStep, defineWorkflow, type WorkflowDef } from '../../src/platform/durable/workflow.ts';
import { versionLabel } from '../../src/platform/durable/registry.ts';

/** The step a later version adds after the first version's steps (its name in a run's checkpoints says which definition ran it). */
export const CLOSING_STEP = 'closing-note';

/**
 * Version `version` of a workflow for the version tests: the first version's steps plus a closing
 * step, and a run output marked `definition: <name>@v<version>`, so a finished run shows which
 * definition carried it: its checkpoints (one more step) and its output.
 */
export function laterVersion(first: WorkflowDef, version: number): WorkflowDef {
  const definition = versionLabel(first.name, version);
  const closing = defineStep({
    name: CLOSING_STEP,
    input: z.object({ outputs: z.record(z.string(), z.unknown()) }),
    output: z.object({ definition: z.string(), after: z.array(z.string()) }),
    run: async ({ outputs }) => ({ definition, after: Object.keys(outputs) }),
  });
  return defineWorkflow({
    ...first,
    version,
    steps: [...first.steps, closing],
    finish(outputs) {
      const last = first.steps[first.steps.length - 1]!.name;
      const base = first.finish ? first.finish(outputs) : { status: 'completed' as const, output: outputs[last] };
      return { status: base.status, output: { ...(base.output as Record<string, unknown>), definition } };
    },
  });
}

/** The versions a process registers of each given first version: `1` is the definition itself, any other a `laterVersion`. */
export function withVersions(firsts: WorkflowDef[], versions: number[]): WorkflowDef[] {
  return firsts.flatMap((first) => versions.map((v) => (v === first.version ? first : laterVersion(first, v))));
}

/** `GP_VERSIONS` as a worker process reads it: comma-separated versions, default `1`. */
export function versionsFromEnv(value: string | undefined): number[] {
  return (value ?? '1').split(',').map((s) => Number(s.trim()));
}
