import { describe, expect, it } from 'vitest';
import { chaosVerdict, type ChaosOutcome } from '../chaos/verdict.ts';

/** A run with nothing wrong: no invariant broken, no unexpected answer or exit, nothing left in the queue. */
const clean: ChaosOutcome = {
  invariantsOk: true,
  unexpectedAnswers: 0,
  crashes: { api: 0, workers: 0, failedBoots: 0 },
  stepJobsLeft: 0,
  postgresRestarts: 0,
};

/**
 * The chaos run's verdict (test/chaos/chaos-run.ts). It used to read invariants, unexpected answers,
 * the API's crashes and the step jobs left, not the workers' exits: the harness restarts a worker that
 * exits on its own, so lost and duplicated stayed 0 and `unexpected exits: … workers 3` was printed
 * next to `RESULT: PASS` (and `npm run chaos` exited 0).
 */
describe('chaos verdict', () => {
  it('passes a run with nothing wrong', () => {
    expect(chaosVerdict(clean)).toEqual({ ok: true, failures: [] });
  });

  it('fails a run in which a booted worker exited without the harness killing it', () => {
    const v = chaosVerdict({ ...clean, crashes: { api: 0, workers: 1, failedBoots: 0 } });
    expect(v.ok).toBe(false);
    expect(v.failures).toEqual(['1 booted worker exited unexpectedly (not killed by the harness)']);
  });

  it('fails it with the PostgreSQL restart too: a worker at work must survive the outage', () => {
    const v = chaosVerdict({ ...clean, crashes: { api: 0, workers: 3, failedBoots: 0 }, postgresRestarts: 1 });
    expect(v.ok).toBe(false);
    expect(v.failures).toEqual(['3 booted workers exited unexpectedly (not killed by the harness)']);
  });

  it('fails a run without a PostgreSQL outage in which a worker exited before it had booted', () => {
    const v = chaosVerdict({ ...clean, crashes: { api: 0, workers: 0, failedBoots: 2 } });
    expect(v.ok).toBe(false);
    expect(v.failures).toEqual(['2 workers exited before they had booted, in a run without a PostgreSQL outage']);
  });

  it('tolerates a worker that failed to boot in a run whose PostgreSQL was restarted', () => {
    expect(chaosVerdict({ ...clean, crashes: { api: 0, workers: 0, failedBoots: 1 }, postgresRestarts: 1 })).toEqual({ ok: true, failures: [] });
  });

  it('fails on each of the other faults, and names them all', () => {
    const v = chaosVerdict({ invariantsOk: false, unexpectedAnswers: 2, crashes: { api: 1, workers: 1, failedBoots: 0 }, stepJobsLeft: 3, postgresRestarts: 0 });
    expect(v.ok).toBe(false);
    expect(v.failures).toEqual([
      'invariants broken (lost, duplicated, stuck or invalid terminal states above)',
      '2 unexpected answers',
      'the API exited unexpectedly 1 time',
      '1 booted worker exited unexpectedly (not killed by the harness)',
      '3 step jobs left runnable in the queue',
    ]);
  });
});
