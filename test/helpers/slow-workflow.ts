import { defineWorkflow, type RetryPolicy, type StepContext, type StepDef, type WorkflowDef } from '../../src/platform/durable/workflow.ts';
import { goldenPathWorkflow } from '../../src/modules/golden-path/golden-path.workflow.ts';
import { approvalPacketStep } from '../../src/modules/approvals/approval-packet.step.ts';
import { evidencePackStep } from '../../src/modules/evidence/evidence-pack.step.ts';

export const SLOW_WORKFLOW = 'gp-slow';
export const SLOW_TAG = 'gps';
export const SLOW_QUEUE = 'gp-slow';
/** The log line a gated step writes when it is entered (the recovery tests kill workers on it). */
export const STEP_ENTERED = 'slow step entered';

/** Runs before each step's body, inside the step's transaction: a delay, a barrier, a hang. */
export type StepGate = (info: { seq: number; step: string; ctx: StepContext }) => Promise<void>;

/**
 * How the code differs from the code that started a run: `reordered` swaps steps 1 and 2,
 * `renamed` renames step 1. Both must be refused as non-determinism against existing checkpoints.
 */
export type SlowVariant = 'original' | 'reordered' | 'renamed';

/**
 * The golden path's real steps (domain rows and all) under another name, tag and queue, each step
 * behind a gate so a test can make it genuinely slow, hang, or meet another execution. Meant for
 * class A submissions, which need no human; a B/C submission would wait with no SLA timer (its schedule throws, which the approval step logs).
 */
export function slowWorkflow(opts: { gate?: StepGate; variant?: SlowVariant; retry?: Partial<RetryPolicy> } = {}): WorkflowDef {
  const approval = approvalPacketStep({
    slaBSeconds: 3600,
    slaCSeconds: 3600,
    sla: {
      async schedule() {
        throw new Error(`${SLOW_WORKFLOW} runs class A submissions only`);
      },
      async cancel() {
        throw new Error(`${SLOW_WORKFLOW} runs class A submissions only`);
      },
    },
  });
  const base = goldenPathWorkflow(approval, evidencePackStep, undefined);
  const gate = opts.gate ?? (async () => {});
  let steps: StepDef[] = base.steps;
  if (opts.variant === 'reordered') steps = [steps[1]!, steps[0]!, ...steps.slice(2)];
  if (opts.variant === 'renamed') steps = [{ ...steps[0]!, name: `${steps[0]!.name}-v2` }, ...steps.slice(1)];
  // Every step's retry policy bent the same way (the API's definition must agree with the worker's: it sizes the job's attempts).
  if (opts.retry) steps = steps.map((s) => ({ ...s, retry: { ...s.retry, ...opts.retry } }));
  return defineWorkflow({ ...base, name: SLOW_WORKFLOW, tag: SLOW_TAG, queue: SLOW_QUEUE, steps: steps.map((s) => gated(s, gate)) });
}

/** `wf` with each step behind `gate` (a worker process's golden path whose steps a test crashes: test-worker.ts GP_GATE_GOLDEN_PATH). */
export function gatedWorkflow(wf: WorkflowDef, gate: StepGate): WorkflowDef {
  return { ...wf, steps: wf.steps.map((s) => gated(s, gate)) };
}

function gated(step: StepDef, gate: StepGate): StepDef {
  return {
    ...step,
    async run(input, ctx) {
      await gate({ seq: ctx.sequenceNum, step: step.name, ctx });
      return step.run(input, ctx);
    },
  };
}
