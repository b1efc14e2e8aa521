import { afterAll, describe, expect, it } from 'vitest';
import { waitFor } from '../helpers/poll.ts';
import { startEnvironment, workerBooted, type Environment } from './environment.ts';

/**
 * The chaos environment restarts a worker that exits without the harness killing it, and counts the
 * exit: as a crash of a booted worker (it had logged `worker started`; the chaos verdict fails on it,
 * test/unit/chaos-verdict.test.ts) or as a failed boot (its start failed — expected while the run's own
 * PostgreSQL is down). Both exits here are signals this test sends itself, not the harness's kills.
 */
describe('chaos harness: workers that exit on their own', () => {
  let env: Environment | undefined;
  afterAll(async () => {
    await env?.stop({ keepDir: false });
  });

  it('are counted as booted-worker crashes or failed boots, and restarted', { timeout: 240_000 }, async () => {
    const lines: string[] = [];
    env = await startEnvironment({ workers: 1, ownRedis: false, ownPostgres: false, watchBoot: true, log: (l) => lines.push(l) });
    const e = env;
    const where = () => `logs in ${e.dir}; ${lines.join('; ')}`;
    const first = e.workers[0]!;
    await waitFor(() => workerBooted(first), { timeoutMs: 120_000, intervalMs: 200, what: `worker-0 to boot (${where()})` });

    // A booted worker dies on its own (SIGKILL from outside the harness): a crash, and a new worker.
    first.proc.kill('SIGKILL');
    await waitFor(() => e.workers[0] !== first, { timeoutMs: 60_000, intervalMs: 50, what: `worker-0 to be restarted (${where()})` });
    expect(e.crashes).toEqual({ api: 0, workers: 1, failedBoots: 0 });

    // Its replacement dies before it has booted. Stopped first (SIGSTOP), so it writes no more lines
    // while the test reads whether it had booted: it had not, or the test's premise is gone.
    const second = e.workers[0]!;
    second.proc.kill('SIGSTOP');
    expect(workerBooted(second), 'the restarted worker booted before the test stopped it').toBe(false);
    second.proc.kill('SIGKILL');
    await waitFor(() => e.workers[0] !== second, { timeoutMs: 60_000, intervalMs: 50, what: `worker-0 to be restarted again (${where()})` });
    expect(e.crashes).toEqual({ api: 0, workers: 1, failedBoots: 1 });
    expect(lines.filter((l) => l.includes('worker-0 exited'))).toEqual([
      expect.stringContaining('worker-0 exited unexpectedly after it had booted'),
      expect.stringContaining('worker-0 exited before it had booted'),
    ]);

    // And the third one boots: the deployment goes on.
    const third = e.workers[0]!;
    await waitFor(() => workerBooted(third), { timeoutMs: 120_000, intervalMs: 200, what: `the restarted worker-0 to boot (${where()})` });
  });
});
