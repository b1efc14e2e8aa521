import type { DoneItem } from './child-ipc.ts';
import { latency, max, nowMs, type Latency } from './stats.ts';

/**
 * Matches completion reports (from worker processes, by run id) with the runs the benchmark started.
 * A completion may arrive before the start call has returned its id: it is kept until claimed.
 */
export class Completions {
  private readonly waiters = new Map<string, (at: number) => void>();
  private readonly early = new Map<string, number>();

  feed = (items: DoneItem[]) => {
    for (const [id, at] of items) {
      const w = this.waiters.get(id);
      if (w) {
        this.waiters.delete(id);
        w(at);
      } else this.early.set(id, at);
    }
  };

  wait(id: string): Promise<number> {
    const at = this.early.get(id);
    if (at !== undefined) {
      this.early.delete(id);
      return Promise.resolve(at);
    }
    return new Promise((r) => this.waiters.set(id, r));
  }

  /** Forgets runs nobody waits for any more (an abandoned loop). */
  clear(): void {
    this.waiters.clear();
    this.early.clear();
  }
}

export interface LoopResult {
  runs: number;
  seconds: number;
  /** Steady-state rate: completions between the 10th and 90th percentile of completion times. */
  runsPerSec: number;
  /** Submission to completion, ms. */
  e2e: Latency;
  /** The start call (POST, or start_run + enqueue), ms. */
  start: Latency;
}

/** Completions per second over the middle 80 % of the completion times: no ramp-up, no drain. */
export function steadyRate(doneAt: number[]): number {
  const t = [...doneAt].sort((a, b) => a - b);
  if (t.length < 10) return t.length / Math.max(1e-3, ((t.at(-1) ?? 0) - (t[0] ?? 0)) / 1000);
  const lo = Math.floor(t.length * 0.1);
  const hi = Math.ceil(t.length * 0.9) - 1;
  return (hi - lo) / ((t[hi]! - t[lo]!) / 1000);
}

/**
 * Keeps `inFlight` runs in flight: each completion starts the next, until `total` runs have started
 * or `maxMs` has passed, then waits for the started runs to complete (unless `abandonAfterMs`: then
 * it stops waiting at that point and reports what completed, for loads too deep to drain quickly).
 */
export async function closedLoop(opts: {
  total: number;
  inFlight: number;
  start(i: number): Promise<string>;
  completions: Completions;
  maxMs?: number;
  abandonAfterMs?: number;
  timeoutMs?: number;
}): Promise<LoopResult> {
  const e2e: number[] = [];
  const starts: number[] = [];
  const doneAt: number[] = [];
  let next = 0;
  const began = nowMs();
  const stopStartingAt = began + (opts.maxMs ?? Number.POSITIVE_INFINITY);
  const abandonAt = opts.abandonAfterMs === undefined ? Number.POSITIVE_INFINITY : began + opts.abandonAfterMs;
  const deadline = Date.now() + (opts.timeoutMs ?? 600_000);
  let abandoned = false;
  const lane = async () => {
    while (next < opts.total && nowMs() < stopStartingAt && !abandoned) {
      next++;
      const t0 = nowMs();
      const id = await opts.start(next);
      starts.push(nowMs() - t0);
      const limit = Math.min(deadline - Date.now(), abandonAt - nowMs());
      let timer: NodeJS.Timeout | undefined;
      const at = await Promise.race([
        opts.completions.wait(id),
        new Promise<number | undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), Math.max(1, limit)))),
      ]);
      clearTimeout(timer);
      if (at === undefined) {
        // (timers may fire a hair early against the high-resolution clock)
        if (nowMs() >= abandonAt - 50) {
          abandoned = true;
          return;
        }
        throw new Error(`run ${id} did not complete within the benchmark's timeout`);
      }
      e2e.push(at - t0);
      doneAt.push(at);
    }
  };
  await Promise.all(Array.from({ length: Math.min(opts.inFlight, opts.total) }, lane));
  if (abandoned) opts.completions.clear();
  const seconds = doneAt.length ? (max(doneAt) - began) / 1000 : 0;
  return { runs: e2e.length, seconds, runsPerSec: steadyRate(doneAt), e2e: latency(e2e), start: latency(starts) };
}
