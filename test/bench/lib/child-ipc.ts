/**
 * The child side of the benchmark's IPC channel: a child reports readiness, reports completions
 * (id + wall-clock time, batched every REPORT_EVERY_MS so reporting does not shape the load), and
 * answers stats requests. Times are taken in the child, so batching never skews a latency.
 */
export type DoneItem = [id: string, atMs: number];

const REPORT_EVERY_MS = 10;

export type ChildMessage =
  | { type: 'ready'; pid: number; info?: unknown }
  | { type: 'done'; items: DoneItem[] }
  | { type: 'stats'; id: number; stats: unknown }
  | { type: 'result'; result: unknown };

export type ParentMessage = { type: 'stats'; id: number; reset?: boolean } | { type: 'run'; params: unknown };

export interface ChildChannel {
  ready(info?: unknown): void;
  done(id: string, atMs: number): void;
  result(result: unknown): void;
}

export function childChannel(opts: { collect(): unknown | Promise<unknown>; reset(): void; onRun?(params: unknown): void }): ChildChannel {
  let pending: DoneItem[] = [];
  let scheduled = false;
  const send = (m: ChildMessage) => {
    if (process.connected) process.send!(m);
  };
  const flush = () => {
    scheduled = false;
    const items = pending;
    pending = [];
    if (items.length) send({ type: 'done', items });
  };
  process.on('message', (m: ParentMessage) => {
    if (m.type === 'stats') {
      void Promise.resolve(opts.collect()).then((stats) => {
        if (m.reset) opts.reset();
        send({ type: 'stats', id: m.id, stats });
      });
    } else if (m.type === 'run') {
      opts.onRun?.(m.params);
    }
  });
  // The parent going away (Ctrl-C, crash) takes the child with it: no orphans on a shared machine.
  process.on('disconnect', () => process.exit(0));
  return {
    ready: (info) => send({ type: 'ready', pid: process.pid, info }),
    done(id, atMs) {
      pending.push([id, atMs]);
      if (!scheduled) {
        scheduled = true;
        // Every ~10 ms rather than every event-loop turn: a message per completion made the IPC pipe's
        // writes (and the benchmark process's wake-ups) a few per cent of a worker's time, overhead of
        // the measurement that DBOS's peer (completions seen in-process) never pays. The time is taken
        // above, so the wait changes no latency; the closed loop's next start waits at most this long.
        setTimeout(flush, REPORT_EVERY_MS);
      }
    },
    result: (result) => send({ type: 'result', result }),
  };
}

/** Resident set size of this process in bytes. */
export function rssBytes(): number {
  return process.memoryUsage.rss();
}
