import { describe, expect, it } from 'vitest';
import { buildReport, type Results } from '../bench/report.ts';
import { planFor } from '../bench/plan.ts';
import type { Measured } from '../bench/lib/measure.ts';
import type { LoopResult } from '../bench/lib/closed-loop.ts';
import { latency } from '../bench/lib/stats.ts';

/** One round of one side: step durations by sequence number (the pooled figure is taken from them all). */
function round(bySeq: Record<number, number[]>, withBySeq = true): Measured<LoopResult> {
  const all = Object.values(bySeq).flat();
  return {
    result: { runs: 10, seconds: 1, runsPerSec: 10, e2e: latency([1]), start: latency([1]) },
    xactCommit: 0,
    xactRollback: 0,
    roundTrips: 0,
    redisWrites: 0,
    workerRssMax: 0,
    workerCpuMs: 0,
    otherCpuMs: 0,
    localCpuMs: 0,
    pgCpuMs: 10,
    wallMs: 1000,
    redisCpuMs: 0,
    replays: 0,
    step: latency(all),
    ...(withBySeq ? { stepBySeq: Object.fromEntries(Object.entries(bySeq).map(([k, v]) => [k, latency(v)])) } : {}),
  };
}

const results = (rls: Results['rls']): Results => ({
  plan: planFor(true),
  errors: {},
  settings: { workerConcurrency: 8, poolMax: 10, lockDurationMs: 2000, stalledIntervalMs: 500, workerNodeFlags: '' },
  rls,
});
const rlsTarget = (r: Results) => buildReport(r).targets.find((t) => t.figure === 'RLS overhead per step (%)')!;

describe('benchmark report: the RLS figure', () => {
  // Step 1 (reads the run: two round trips) takes 4 ms, steps 2-4 (one each) 1 ms. RLS on adds 0.1 ms
  // to every step: a run's step time goes 7 → 7.4 ms, +5.7 %.
  const off = { 1: [4, 4, 4], 2: [1, 1, 1], 3: [1, 1, 1], 4: [1, 1, 1] };
  const on = { 1: [4.1, 4.1, 4.1], 2: [1.1, 1.1, 1.1], 3: [1.1, 1.1, 1.1], 4: [1.1, 1.1, 1.1] };

  it("reads a run's step time: the sum of each step's p50, RLS on against off", () => {
    const target = rlsTarget(results({ on: [round(on), round(on)], off: [round(off), round(off)], control: [round(on)] }));
    expect(target.value).toBeCloseTo((7.4 / 7 - 1) * 100, 2);
    expect(target.status).toBe('PASS');
  });

  it('is not moved by the mix of step kinds the pooled median is taken over', () => {
    // Off: the pooled median lands on a 1 ms step; on: a mix with more step-1 samples (as a workflow
    // change can make it) tips it onto the 4 ms kind. The pooled p50 would read +310 %; the per-step
    // sum reads what the steps cost.
    const offMix = { 1: [4, 4, 4, 4, 4], 2: [1, 1], 3: [1, 1], 4: [1, 1] };
    const onMix = { 1: [4.1, 4.1, 4.1, 4.1, 4.1, 4.1, 4.1], 2: [1.1, 1.1], 3: [1.1, 1.1], 4: [1.1, 1.1] };
    const report = buildReport(results({ on: [round(onMix)], off: [round(offMix)] }));
    expect(report.targets.find((t) => t.figure === 'RLS overhead per step (%)')!.value).toBeCloseTo((7.4 / 7 - 1) * 100, 2);
    const pooled = report.rows.find((r) => r.figure.startsWith('  all steps pooled'))!;
    expect(pooled.ours).toBe('4.1 / 1');
  });

  it('does not judge the target when the A/A control differs by more than 10 % (noise the method cannot tell from RLS)', () => {
    const noisy = { 1: [4.1 * 1.17], 2: [1.1 * 1.17], 3: [1.1 * 1.17], 4: [1.1 * 1.17] };
    const report = buildReport(results({ on: [round(on)], off: [round(off)], control: [round(noisy)] }));
    const target = report.targets.find((t) => t.figure === 'RLS overhead per step (%)')!;
    expect(target.status).toBe('n/a');
    expect(target.value).toBeUndefined();
    expect(report.rows.find((r) => r.figure.startsWith('TARGET RLS overhead'))!.figure).toContain('not judged: the A/A control differs by -14.5 %');
    // Within 10 %: judged as before.
    const quiet = { 1: [4.1 * 1.05], 2: [1.1 * 1.05], 3: [1.1 * 1.05], 4: [1.1 * 1.05] };
    expect(rlsTarget(results({ on: [round(on)], off: [round(off)], control: [round(quiet)] })).status).toBe('PASS');
  });

  it('misses the target when the policies cost more than 10 %', () => {
    const slow = { 1: [4.5], 2: [1.2], 3: [1.2], 4: [1.2] };
    expect(rlsTarget(results({ on: [round(slow)], off: [round(off)] })).status).toBe('MISS');
  });

  it('falls back to the pooled step p50 for reports without per-step durations', () => {
    const target = rlsTarget(results({ on: [round(on, false)], off: [round(off, false)] }));
    expect(target.value).toBeCloseTo((1.1 / 1 - 1) * 100, 2);
  });
});

describe('benchmark report: the recovery target', () => {
  const recovery = (allCompleted: boolean): Results => ({
    plan: planFor(true),
    errors: {},
    settings: { workerConcurrency: 8, poolMax: 10, lockDurationMs: 2000, stalledIntervalMs: 500, workerNodeFlags: '' },
    recovery: { kills: 4, seconds: [1, 1.2, 2.9, 3.5], median: 2.05, max: 3.5, redeliveredMedian: 1.5, allCompleted, settings: { lockDurationMs: 2000, stalledIntervalMs: 500 } },
  });
  const recoveryTarget = (r: Results) => buildReport(r).targets.find((t) => t.figure.startsWith('recovery after SIGKILL'))!;

  it('passes a fast handover in which every run completed with one checkpoint per step', () => {
    expect(recoveryTarget(recovery(true)).status).toBe('PASS');
  });

  it('misses when a recovered run did not complete or a step was checkpointed twice, however fast the handover', () => {
    // A fast "recovery" that lost or duplicated a step is not a recovery (as a refused POST is not a fast one).
    expect(recoveryTarget(recovery(false)).status).toBe('MISS');
  });
});

describe('benchmark report: growth with tenants', () => {
  const point = (tenants: number, tenantsWithRuns?: number): Results => ({
    plan: planFor(true),
    errors: {},
    settings: { workerConcurrency: 8, poolMax: 10, lockDurationMs: 2000, stalledIntervalMs: 500, workerNodeFlags: '' },
    data: [{ rows: 100_000, tenants, ...(tenantsWithRuns === undefined ? {} : { tenantsWithRuns }), m: round({ 1: [4], 2: [1], 3: [1], 4: [1] }) }],
  });
  const label = (r: Results) => buildReport(r).rows.find((x) => x.figure.startsWith('step p50 / p99 ms, 100,000 runs'))!.figure;

  it('says how many of the tenants the measured runs came from when fewer runs than tenants were measured', () => {
    // 60 runs round-robin over 1,000 tenants reach 60 of them, not 1,000.
    expect(label(point(1000, 60))).toBe('step p50 / p99 ms, 100,000 runs in the table, 1000 tenant(s) (runs from 60 of them)');
  });

  it('keeps the label when every tenant had a run, and for reports that did not record it', () => {
    expect(label(point(1000, 1000))).toBe('step p50 / p99 ms, 100,000 runs in the table, 1000 tenant(s)');
    expect(label(point(1000))).toBe('step p50 / p99 ms, 100,000 runs in the table, 1000 tenant(s)');
    expect(label(point(1, 1))).toBe('step p50 / p99 ms, 100,000 runs in the table, 1 tenant(s)');
  });
});
