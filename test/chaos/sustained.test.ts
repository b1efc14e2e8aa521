import { describe, expect, it } from 'vitest';
import { formatSustainedReport, runSustained } from './sustained.ts';

/**
 * A short smoke of the sustained-load mode, so the tool keeps working: 15 s at 10 submissions a
 * second. Memory slopes need minutes to mean anything (the first minute is warm-up), and a shared CI
 * machine may not sustain even this rate, so neither is judged here; the documented run
 * (`npm run chaos -- --sustained 300s --rate 20`) judges both.
 */
describe('sustained load (short)', () => {
  it('the queue drains, no run is stuck, lost or doubled, and PostgreSQL connections stay within the pools', { timeout: 600_000 }, async () => {
    const lines: string[] = [];
    const report = await runSustained({ durationMs: 15_000, rate: 10, workers: 2, sampleEveryMs: 2_000, maxRssSlopeMbPerMin: Number.POSITIVE_INFINITY, minGoodput: 0, log: (l) => lines.push(l) });
    console.log(`${lines.join('\n')}\n${formatSustainedReport(report)}`);
    expect(report.invariants.accepted).toBe(report.submitted);
    expect({ lost: report.invariants.lost, duplicated: report.invariants.duplicated, stuck: report.invariants.stuck }).toEqual({ lost: 0, duplicated: 0, stuck: 0 });
    expect(report.pgConnections.max).toBeGreaterThan(0);
    expect(report.pgConnections.max).toBeLessThanOrEqual(report.pgConnections.budget);
    expect(report.client.unexpected).toEqual([]);
    expect(report.samples.every((s) => s.apiRssMb !== null)).toBe(true);
    expect(report.failures).toEqual([]);
  });
});
