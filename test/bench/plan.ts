import { STATS_SETTLE_MS } from './lib/measure.ts';

/**
 * What one benchmark run does, by mode. `--quick` keeps every phase but shortens it (and says so in
 * the table): fewer runs, time-boxed loops, 5 kills instead of 20, 10⁵ seeded rows instead of 10⁶.
 */
export interface Plan {
  mode: 'quick' | 'full';
  /**
   * Quiet before and after a window whose transactions are counted (STATS_SETTLE_MS). `--quick` waits
   * 1.5 s, so its counts read low (a run's last second can be missing) and it stays under 3 minutes;
   * the full run waits until every count is surely in (11 s).
   */
  statsSettleMs: number;
  /** Like-for-like comparison (engine, DBOS, raw BullMQ): one process each, same load. ABBA rounds. */
  compare: { total: number; inFlight: number; warmup: number; maxMs: number; rounds: number };
  e2e: { total: number; inFlight: number; warmup: number; maxMs: number };
  idempotencyPairs: number;
  fixedRate: { rps: number; seconds: number };
  rls: { rounds: number; total: number; inFlight: number; maxMs: number };
  recoveryKills: number;
  floor: { seconds: number; clients: number[] };
  inFlight: { light: { total: number; maxMs: number }; deep: { total: number; windowMs: number; sweepBacklog: number } };
  workers: { counts: number[]; total: number; inFlight: number; maxMs: number };
  data: { sizes: number[]; tenants: number; runs: number; inFlight: number; maxMs: number };
}

export function planFor(quick: boolean): Plan {
  if (quick) {
    return {
      mode: 'quick',
      statsSettleMs: 1_500,
      compare: { total: 600, inFlight: 100, warmup: 40, maxMs: 5_000, rounds: 1 },
      e2e: { total: 400, inFlight: 50, warmup: 30, maxMs: 5_000 },
      idempotencyPairs: 80,
      fixedRate: { rps: 200, seconds: 3 },
      rls: { rounds: 6, total: 30, inFlight: 1, maxMs: 2_000 },
      recoveryKills: 5,
      floor: { seconds: 4, clients: [16] },
      inFlight: { light: { total: 100, maxMs: 2_500 }, deep: { total: 3_000, windowMs: 6_000, sweepBacklog: 2_000 } },
      workers: { counts: [2, 4], total: 600, inFlight: 100, maxMs: 3_000 },
      data: { sizes: [10_000, 100_000], tenants: 1_000, runs: 60, inFlight: 10, maxMs: 2_500 },
    };
  }
  return {
    mode: 'full',
    statsSettleMs: STATS_SETTLE_MS,
    compare: { total: 5_000, inFlight: 100, warmup: 100, maxMs: 25_000, rounds: 2 },
    e2e: { total: 3_000, inFlight: 50, warmup: 100, maxMs: 20_000 },
    idempotencyPairs: 300,
    fixedRate: { rps: 200, seconds: 15 },
    rls: { rounds: 18, total: 100, inFlight: 1, maxMs: 8_000 },
    recoveryKills: 20,
    floor: { seconds: 10, clients: [1, 16] },
    inFlight: { light: { total: 400, maxMs: 10_000 }, deep: { total: 20_000, windowMs: 45_000, sweepBacklog: 10_000 } },
    workers: { counts: [2, 4], total: 5_000, inFlight: 100, maxMs: 15_000 },
    // 1,000 runs: the many-tenant points reach every one of the 1,000 tenants (300 reached 300 of them).
    data: { sizes: [10_000, 1_000_000], tenants: 1_000, runs: 1_000, inFlight: 10, maxMs: 12_000 },
  };
}
