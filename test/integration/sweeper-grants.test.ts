import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { jsonLines } from '../helpers/api-process.ts';

/**
 * A release whose grants were not applied (its `db:migrate` skipped): the system role cannot read a
 * column the recovery sweeper reads. No sweep can succeed until migrate runs, so the worker must say
 * so at error level, naming the fix — a warning read as a passing hiccup would hide that no lost run
 * is being recovered.
 */
let stack: TestStack;
beforeAll(async () => {
  stack = await startStack();
  await stack.db.admin('REVOKE SELECT (workflow_version) ON durable_runs FROM dealix_system');
});
afterAll(async () => stack?.stop());

describe('the recovery sweeper without its grants', () => {
  it('logs each failed sweep at error level, naming `npm run db:migrate`', async () => {
    const worker = await stack.spawnWorker({ SWEEPER_INTERVAL: '1s' });
    const line = await waitFor(() => jsonLines(worker.output()).find((l) => typeof l.msg === 'string' && l.msg.startsWith('sweep failed')), {
      timeoutMs: 30_000,
      what: 'a sweep to fail',
    });
    expect(line.level).toBe(50);
    expect(line.msg).toContain('npm run db:migrate');
    expect(line.err?.code).toBe('42501');
  });
});
