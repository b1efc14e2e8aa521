import { randomUUID } from 'node:crypto';
import { installIoCounter } from '../lib/io-counter.ts';
import { Completions, closedLoop, type LoopResult } from '../lib/closed-loop.ts';
import { measure, type Measured } from '../lib/measure.ts';
import { oursProducer, spawnOursWorkers, startEngineRun, stopAll, wireCompletions, type OursTarget } from '../lib/ours.ts';
import type { Child } from '../lib/children.ts';
import type { Container } from '../../../src/container.ts';

export interface LoopOpts {
  total: number;
  inFlight: number;
  /** Runs before the measurement (JIT, pools, caches). */
  warmup?: number;
  maxMs?: number;
  abandonAfterMs?: number;
  /** Runs are spread round-robin over these tenants (default: one tenant). */
  tenants?: string[];
  /** Count transactions (settles PostgreSQL's statistics before and after: 2 × STATS_SETTLE_MS). Default true. */
  accounting?: boolean;
}

export type EngineResult = Measured<LoopResult>;

/** A live engine-only target: worker processes plus the producer, reusable across measurements. */
export interface EngineTarget {
  target: OursTarget;
  workers: Child[];
  producer: Container;
  run(opts: LoopOpts): Promise<EngineResult>;
  addWorkers(n: number): Promise<void>;
  close(): Promise<void>;
}

export async function openEngine(target: OursTarget, workerCount: number, workerEnv: Record<string, string> = {}): Promise<EngineTarget> {
  const local = installIoCounter();
  const [workers, producer] = await Promise.all([spawnOursWorkers(target, workerCount, { env: workerEnv }), oursProducer(target)]);
  let completions = new Completions();
  wireCompletions(workers, (items) => completions.feed(items));
  const defaultTenant = randomUUID();
  // The producer is the load generator, not the system under test: at most 8 starts at once, so a
  // burst of 1,000 lanes queues here instead of timing out on its connection pool.
  const limit = semaphore(8);
  let closed = false;
  return {
    target,
    workers,
    producer,
    async run(opts) {
      const tenants = opts.tenants ?? [defaultTenant];
      const start = (i: number) => limit(() => startEngineRun(producer, tenants[i % tenants.length]!));
      const warmup = opts.warmup ?? Math.min(100, Math.max(20, Math.round(opts.total / 5)));
      if (warmup > 0) await closedLoop({ total: warmup, inFlight: Math.min(opts.inFlight, warmup), start, completions });
      const loop = { total: opts.total, inFlight: opts.inFlight, start, completions, ...(opts.maxMs ? { maxMs: opts.maxMs } : {}), ...(opts.abandonAfterMs ? { abandonAfterMs: opts.abandonAfterMs } : {}) };
      const out = await measure({ database: target.db.name, workers, local, fn: () => closedLoop(loop), accounting: opts.accounting ?? true });
      // An abandoned loop leaves runs in flight: later completions must not meet a stale waiter.
      if (opts.abandonAfterMs) completions = new Completions();
      return out;
    },
    async addWorkers(n) {
      const more = await spawnOursWorkers(target, n, { env: workerEnv });
      wireCompletions(more, (items) => completions.feed(items));
      workers.push(...more);
    },
    async close() {
      if (closed) return;
      closed = true;
      await stopAll(workers);
      await producer.close();
    },
  };
}

function semaphore(n: number): <T>(fn: () => Promise<T>) => Promise<T> {
  let active = 0;
  const queue: Array<() => void> = [];
  return async (fn) => {
    if (active >= n) await new Promise<void>((r) => queue.push(r));
    active++;
    try {
      return await fn();
    } finally {
      active--;
      queue.shift()?.();
    }
  };
}
