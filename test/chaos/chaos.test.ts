import { describe, expect, it } from 'vitest';
import { formatChaosReport, runChaos } from './chaos-run.ts';

/**
 * The short chaos run of CI (the long one is `npm run chaos -- --runs 1000 ...`, docs/reliability.md):
 * 100 submissions over HTTP, each retried by key, while a random worker is SIGKILLed every 2 s, the
 * run's own Redis is flushed once and its own PostgreSQL cluster restarted once mid-run.
 */
describe('chaos', () => {
  it('no run is lost or done twice while workers are killed, Redis is flushed and PostgreSQL restarts', { timeout: 900_000 }, async () => {
    const lines: string[] = [];
    const report = await runChaos({ runs: 100, workers: 3, killEverySec: 2, rate: 10, flushRedis: true, restartPostgres: true, log: (l) => lines.push(l) });
    console.log(`${lines.join('\n')}\n${formatChaosReport(report)}`);
    expect(report.kills).toBeGreaterThanOrEqual(4);
    expect(report.redisFlushes).toBe(1);
    expect(report.postgresRestarts).toBe(1);
    expect(report.invariants.accepted).toBe(100);
    expect(report.invariants.idempotency.retries).toBeGreaterThanOrEqual(100);
    expect(report.invariants.idempotency.mismatched).toBe(0);
    expect(report.invariants.invalidTerminal).toEqual([]);
    expect(report.invariants.stuck).toBe(0);
    expect(report.client.unexpected).toEqual([]);
    // Booted workers that exited on their own (restarted, so lost and duplicated do not show them); a
    // worker failing to boot during the PostgreSQL outage is tolerated (verdict.ts).
    expect({ api: report.crashes.api, workers: report.crashes.workers }).toEqual({ api: 0, workers: 0 });
    expect({ lost: report.invariants.lost, duplicated: report.invariants.duplicated }).toEqual({ lost: 0, duplicated: 0 });
    expect(report.failures).toEqual([]);
    expect(report.ok).toBe(true);
  });
});
