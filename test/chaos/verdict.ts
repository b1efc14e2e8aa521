import type { Crashes } from './environment.ts';

/** What a chaos run's verdict reads, gathered by chaos-run.ts once the runs have settled. */
export interface ChaosOutcome {
  /** checkInvariants's verdict: nothing lost, duplicated, stuck or ended in an invalid state. */
  invariantsOk: boolean;
  unexpectedAnswers: number;
  crashes: Crashes;
  /** Step jobs still runnable (waiting, active, waiting-children, prioritized) once the runs settled. */
  stepJobsLeft: number;
  postgresRestarts: number;
}

const times = (n: number, one: string, many: string) => `${n} ${n === 1 ? one : many}`;

/**
 * PASS only if nothing went wrong that the run's own faults do not explain. A worker that had booted
 * and exited without the harness killing it is a crash, whatever the faults: the harness restarts it,
 * so lost and duplicated stay 0 and only this count shows it. A worker that exited before it had
 * booted (its start failed) is tolerated in a run that restarted its PostgreSQL (a worker the killer
 * had just restarted may be starting through the outage); in any other run, no start should fail.
 */
export function chaosVerdict(o: ChaosOutcome): { ok: boolean; failures: string[] } {
  const failures: string[] = [];
  if (!o.invariantsOk) failures.push('invariants broken (lost, duplicated, stuck or invalid terminal states above)');
  if (o.unexpectedAnswers > 0) failures.push(times(o.unexpectedAnswers, 'unexpected answer', 'unexpected answers'));
  if (o.crashes.api > 0) failures.push(`the API exited unexpectedly ${times(o.crashes.api, 'time', 'times')}`);
  if (o.crashes.workers > 0) failures.push(`${times(o.crashes.workers, 'booted worker', 'booted workers')} exited unexpectedly (not killed by the harness)`);
  if (o.crashes.failedBoots > 0 && o.postgresRestarts === 0) {
    failures.push(`${times(o.crashes.failedBoots, 'worker', 'workers')} exited before ${o.crashes.failedBoots === 1 ? 'it had' : 'they had'} booted, in a run without a PostgreSQL outage`);
  }
  if (o.stepJobsLeft > 0) failures.push(`${times(o.stepJobsLeft, 'step job', 'step jobs')} left runnable in the queue`);
  return { ok: failures.length === 0, failures };
}
