import { Console } from 'node:console';
import { describe, expect, it } from 'vitest';
import { latency, max, median, percentile } from '../bench/lib/stats.ts';
import { steadyRate } from '../bench/lib/closed-loop.ts';
import { stdoutToStderr } from '../bench/lib/bench-db.ts';

describe('benchmark statistics', () => {
  it('percentile is nearest-rank: p99 of 100 values is the 99th, of 10 values the largest', () => {
    const hundred = Array.from({ length: 100 }, (_, i) => 100 - i);
    expect(percentile(hundred, 99)).toBe(99);
    expect(percentile(hundred, 50)).toBe(50);
    expect(percentile([3, 1, 2, 10, 5, 4, 9, 8, 7, 6], 99)).toBe(10);
    expect(percentile([], 50)).toBeNaN();
  });

  it('median of an even count is the mean of the two middle values, not the lower one', () => {
    // Recovery over 20 kills and the RLS sides over 6 or 18 rounds are even counts: the lower middle
    // value read as "the median" leans toward passing a "≤" budget.
    expect(median([1, 2, 3, 4])).toBe(2.5);
    expect(median([2.9, 2.9, 3.5, 3.5])).toBe(3.2);
    expect(median([5, 1, 3])).toBe(3);
    expect(median([7])).toBe(7);
    expect(median([])).toBeNaN();
  });

  it('max and latency work on samples larger than the argument limit of a spread call', () => {
    const many = Array.from({ length: 300_000 }, (_, i) => i % 1000);
    expect(max(many)).toBe(999);
    expect(latency(many).max).toBe(999);
    expect(max([])).toBeNaN();
  });

  it('the steady rate counts completions between the 10th and 90th percentile of completion times', () => {
    // One completion every 10 ms: 100 per second, whatever the ramp-up and drain around it.
    const evenly = Array.from({ length: 100 }, (_, i) => 1_000 + i * 10);
    expect(steadyRate([60_000, ...evenly, 0])).toBeCloseTo(100, 6);
  });
});

describe('benchmark --json: stdout carries the report alone', () => {
  it("sends a console-bound logger's lines (MikroORM's migrator) to stderr while the template is migrated", async () => {
    // The global console of a real process (vitest replaces the test's own): it writes to process.stdout.
    const real = new Console({ stdout: process.stdout, stderr: process.stderr });
    const boundLog = real.log.bind(real);
    const out: string[] = [];
    const err: string[] = [];
    const [stdoutWrite, stderrWrite] = [process.stdout.write, process.stderr.write];
    process.stdout.write = ((chunk: string) => out.push(String(chunk)) > 0) as typeof process.stdout.write;
    process.stderr.write = ((chunk: string) => err.push(String(chunk)) > 0) as typeof process.stderr.write;
    try {
      await stdoutToStderr(async () => boundLog("[migrator] Applied 'Migration1'"));
      boundLog('{"report": true}');
    } finally {
      process.stdout.write = stdoutWrite;
      process.stderr.write = stderrWrite;
    }
    expect(out.join('')).toBe('{"report": true}\n');
    expect(err.join('')).toBe("[migrator] Applied 'Migration1'\n");
  });
});
