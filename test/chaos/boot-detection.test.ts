import { afterAll, describe, expect, it } from 'vitest';
import { waitFor } from '../helpers/poll.ts';
import { startEnvironment, workerBooted, type Environment } from './environment.ts';

/**
 * The chaos run kills only workers that have booted, and tells them by their `worker started` line
 * (info). Asked for a coarser LOG_LEVEL (`npm run chaos -- --env LOG_LEVEL=warn`), the line was never
 * written: no worker counted as booted, and the killer waited out the whole run without one kill.
 */
describe('chaos harness: booted workers', () => {
  let env: Environment | undefined;
  afterAll(async () => {
    await env?.stop({ keepDir: false });
  });

  it('are seen whatever LOG_LEVEL the run asks for; the API keeps the level asked', { timeout: 180_000 }, async () => {
    const lines: string[] = [];
    env = await startEnvironment({ workers: 1, ownRedis: false, ownPostgres: false, watchBoot: true, env: { LOG_LEVEL: 'warn' }, log: (l) => lines.push(l) });
    const worker = env.workers[0]!;
    await waitFor(() => workerBooted(worker), { timeoutMs: 90_000, intervalMs: 200, what: `worker-0 to log 'worker started' (logs in ${env.dir}; ${lines.join('; ')})` });
    // pino's info is level 30: the API, asked for warn, writes none. Read once the API has stopped, its whole log
    // written: it writes in batches, so an info line (its 'api listening') not written yet would prove nothing.
    await env.api().stop();
    expect(env.api().logged('"level":30')).toBe(false);
  });
});
