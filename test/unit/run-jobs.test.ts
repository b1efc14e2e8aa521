/**
 * The pure rules behind run jobs (ADR 0005): where a job that carries a run through a step started,
 * how many attempts it gets, and how long a failed step waits before its retry.
 */
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { defineStep, defineWorkflow, jobAttempts, segmentStart, stepBackoffMs, type StepDef } from '../../src/platform/durable/workflow.ts';
import { stepJobId } from '../../src/platform/queue/job-ids.ts';

const step = (name: string, extra: Partial<StepDef> = {}): StepDef =>
  defineStep({ name, input: z.unknown(), output: z.unknown(), run: async () => null, ...extra });

// 1 → 2 (may wait) → 3 → 4 (may wait) → 5; step 3 retries 2 times in all, the others 5 (the default).
const wf = defineWorkflow({
  name: 'rules',
  version: 1,
  tag: 'rules',
  queue: 'rules',
  input: z.unknown(),
  steps: [step('a'), step('b', { mayWait: true }), step('c', { retry: { attempts: 2 } }), step('d', { mayWait: true }), step('e')],
});

describe('run jobs', () => {
  it('a stretch of steps starts after the last step before it that may wait, or at the first step', () => {
    expect([1, 2, 3, 4, 5].map((seq) => segmentStart(wf, seq))).toEqual([1, 1, 3, 3, 5]);
  });

  it("a retried run's jobs are of its retry's generation: an id no earlier generation's job has (ADR 0009)", () => {
    const hash = 'ab'.repeat(32);
    expect(stepJobId('gp', hash, 2, 'economics-model')).toBe(`gp-${hash.slice(0, 40)}-2-economics-model`);
    expect(stepJobId('gp', hash, 2, 'economics-model', 0)).toBe(stepJobId('gp', hash, 2, 'economics-model'));
    const generations = [0, 1, 2, 10].map((retry) => stepJobId('gp', hash, 2, 'economics-model', retry));
    expect(new Set(generations).size).toBe(4);
    expect(generations[1]).toBe(`gp-${hash.slice(0, 40)}-2-economics-model-retry1`);
  });

  it('a job gets the attempts of every step from its own on, so each step keeps its whole budget', () => {
    expect(jobAttempts(wf, 1)).toBe(5 + 5 + 2 + 5 + 5);
    expect(jobAttempts(wf, 3)).toBe(2 + 5 + 5);
    expect(jobAttempts(wf, 5)).toBe(5);
  });

  it('a failed step waits exponentially in its own failures, spread by its jitter', () => {
    const policy = { attempts: 5, backoffMs: 500, jitter: 0.5 };
    for (const [failures, max] of [[1, 500], [2, 1000], [3, 2000], [4, 4000]] as const) {
      for (let i = 0; i < 200; i++) {
        const delay = stepBackoffMs(policy, failures);
        expect(delay).toBeGreaterThanOrEqual(max * (1 - policy.jitter));
        expect(delay).toBeLessThanOrEqual(max);
      }
    }
    expect(stepBackoffMs({ attempts: 3, backoffMs: 100, jitter: 0 }, 3)).toBe(400);
  });
});
