import { z } from 'zod';
import type { Redis } from 'ioredis';
import { defineStep, defineWorkflow, type WorkflowDef } from '../../src/platform/durable/workflow.ts';

export const HOLD_WORKFLOW = 'bench-hold';
export const HOLD_QUEUE = 'bench-hold';

export const holdKey = (prefix: string, runId: string) => `${prefix}:bench:hold:${runId}`;
export const holderKey = (prefix: string, runId: string) => `${prefix}:bench:holder:${runId}`;

/**
 * The recovery benchmark's workflow: step 1 announces which worker holds it, then stays in flight
 * while the benchmark's hold key exists (the benchmark SIGKILLs the holder and deletes the key at the
 * same moment), so the re-execution on another worker is immediate and the measured time is the
 * handover itself: lock expiry, stalled check, pickup, re-run and checkpoint.
 */
export function holdWorkflow(deps: { prefix: string; redis?: Redis }): WorkflowDef {
  const hold = defineStep({
    name: 'hold',
    input: z.object({}),
    output: z.object({ holder_pid: z.number().int(), held_ms: z.number() }),
    retry: { attempts: 3, backoffMs: 100, jitter: 0 },
    async run(_input, ctx) {
      const redis = deps.redis;
      if (!redis) throw new Error('the hold step runs only in a benchmark worker');
      const started = Date.now();
      await redis.set(holderKey(deps.prefix, ctx.run.id), String(process.pid), 'EX', 600);
      while (Date.now() - started < 120_000 && (await redis.exists(holdKey(deps.prefix, ctx.run.id)))) {
        await new Promise((r) => setTimeout(r, 10));
      }
      return { holder_pid: process.pid, held_ms: Date.now() - started };
    },
  });
  const after = defineStep({
    name: 'after-hold',
    input: z.object({}),
    output: z.object({ ok: z.literal(true) }),
    async run() {
      return { ok: true as const };
    },
  });
  return defineWorkflow({ name: HOLD_WORKFLOW, version: 1, tag: 'bh', queue: HOLD_QUEUE, input: z.object({}), steps: [hold, after] });
}
