import { describe, expect, it } from 'vitest';
import assert from 'node:assert/strict';
import { waitFor } from '../helpers/poll.ts';
import { barrier } from '../helpers/run-host.ts';

describe('waitFor', () => {
  it('keeps polling past ordinary errors, and names the last one on a timeout', async () => {
    let calls = 0;
    const value = await waitFor(() => {
      if (++calls < 3) throw new Error('not up yet');
      return calls;
    }, { intervalMs: 1 });
    expect(value).toBe(3);
    await expect(waitFor(() => {
      throw new Error('still down');
    }, { timeoutMs: 20, intervalMs: 1, what: 'the service' })).rejects.toThrow('timed out waiting for the service: still down');
  });

  it.each([
    ['vitest expect', () => expect(1).toBe(2)],
    ['node:assert', () => assert.equal(1, 2)],
  ])('fails at once on a failed assertion inside the callback (%s), without waiting for the deadline', async (_what, fail) => {
    let calls = 0;
    const wait = waitFor(() => {
      calls++;
      fail();
      return true;
    }, { timeoutMs: 5_000, intervalMs: 1 });
    await expect(wait).rejects.toMatchObject({ name: 'AssertionError' });
    expect(calls).toBe(1);
  });
});

describe('barrier', () => {
  // A test that awaited a step which never came (its run went past the hold under CI load) hung to its
  // timeout, its host still running into the file's next tests; the wait now fails at its deadline.
  it('a wait for a step that never reaches it fails at its deadline, saying so; a step that arrives ends the wait', { timeout: 5_000 }, async () => {
    await expect(barrier(50).inside).rejects.toThrow('timed out after 50 ms waiting for a step to reach the barrier');
    const b = barrier(5_000);
    setTimeout(() => b.enter(), 5);
    await expect(b.inside).resolves.toBeUndefined();
    await expect(b.inside).resolves.toBeUndefined(); // read again once arrived: at once
  });
});
