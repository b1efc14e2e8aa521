import type { CheckpointStatus } from './durable-checkpoint.entity.ts';

/** The first sequence_num from 1 without a completed checkpoint: where a retried run goes on. */
export function firstIncompleteStep(completed: ReadonlySet<number>): number {
  let next = 1;
  while (completed.has(next)) next++;
  return next;
}

/**
 * Why a failed run's retry is refused for good (409 `run_not_retryable`), or undefined when a step of
 * it may run again: every one of its `stepCount` steps has a completed checkpoint, or a step's effects
 * committed before the run failed — a `waiting` checkpoint, or one the failure overwrote keeping its
 * output — whose re-run would repeat them. Its checkpoints do not change while the run stays failed,
 * so neither does the answer. DurableRuntime.retry's rule, and what a workflow's submission guard reads
 * to tell a failed run that can never go on (partner offboarding's holder of a partner).
 */
export function notRetryableBecause(checkpoints: ReadonlyArray<{ sequence_num: number; step_name: string; status: CheckpointStatus; has_output: boolean }>, stepCount: number): string | undefined {
  const completed = new Set(checkpoints.filter((c) => c.status === 'completed').map((c) => c.sequence_num));
  if (firstIncompleteStep(completed) > stepCount) return 'every step of it has a completed checkpoint';
  // A `waiting` checkpoint (or one the failure overwrote, keeping its output) says its step's effects committed.
  const committed = checkpoints.find((c) => c.status !== 'completed' && (c.status === 'waiting' || c.has_output));
  return committed ? `its step ${committed.sequence_num} (${committed.step_name}) had committed its effects before the run failed; running it again would repeat them` : undefined;
}
