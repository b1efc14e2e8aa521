import type { IoCounter } from './io-counter.ts';
import { rssBytes } from './child-ipc.ts';

/**
 * What a benchmark child that runs no steps of ours reports when asked (childChannel's `collect` and
 * `reset`): its round trips (`counter`), its resident set size and its CPU time since the last reset;
 * no step times (only our worker times its steps). The same code for the API and a peer, so their
 * counts are made alike.
 */
export function ioStats(counter: IoCounter): { collect(): { queries: number; control: number; redisWrites: number; rss: number; cpuMs: number; stepMs: number[] }; reset(): void } {
  let cpuBase = process.cpuUsage();
  return {
    collect: () => {
      const cpu = process.cpuUsage(cpuBase);
      return { queries: counter.total, control: counter.control, redisWrites: counter.redisWrites, rss: rssBytes(), cpuMs: (cpu.user + cpu.system) / 1000, stepMs: [] };
    },
    reset: () => {
      counter.reset();
      cpuBase = process.cpuUsage();
    },
  };
}
