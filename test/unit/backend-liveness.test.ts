import { describe, expect, it } from 'vitest';
import { backendLiveness, judge, type Activity } from '../../src/platform/db/backend-liveness.ts';

const CHECK = 4_242;
const PID = 1_234;
const MARGIN = 10_000;

/** A reading with the check's own row and `row` (the checked backend's), as the server returns it. */
const reading = (...rows: Partial<Activity>[]) => ({
  ownPid: CHECK,
  rows: [{ pid: CHECK, state: 'active', wait_event_type: null, since_ms: 0, me: true }, ...rows.map((r) => ({ pid: PID, state: 'active', wait_event_type: null, since_ms: 0, me: false, ...r }))],
});

describe('judge (what a liveness check makes of a backend row, coalescing-client.ts)', () => {
  it('a backend running a statement is working, whatever it waits on but its own socket', () => {
    for (const wait of [null, 'Lock', 'LWLock', 'IO', 'IPC', 'Timeout']) expect(judge(reading({ wait_event_type: wait, since_ms: 60_000 }), PID, MARGIN).liveness).toBe('working');
  });

  it('a backend waiting on its socket (to read the rest of the message, or to write its answers) is unsure: a working network ends that wait at once', () => {
    expect(judge(reading({ wait_event_type: 'Client' }), PID, MARGIN).liveness).toBe('unsure');
  });

  it('a backend done for less than the margin is unsure (its answer may be on its way); for the margin or longer, dead', () => {
    for (const state of ['idle', 'idle in transaction', 'idle in transaction (aborted)']) {
      expect(judge(reading({ state, since_ms: MARGIN - 1 }), PID, MARGIN).liveness).toBe('unsure');
      const late = judge(reading({ state, since_ms: MARGIN }), PID, MARGIN);
      expect(late.liveness).toBe('dead');
      expect(late.seen).toBe(`the liveness check found backend ${PID} ${state} for ${MARGIN} ms`);
    }
  });

  it('a backend the server no longer has is dead, and so is the connection when the server did not answer the check', () => {
    expect(judge(reading(), PID, MARGIN)).toEqual({ liveness: 'dead', seen: `the liveness check found backend ${PID} gone` });
    expect(judge({ unreachable: 'nothing within 40000 ms' }, PID, MARGIN).liveness).toBe('dead');
  });

  it('what the check cannot tell leaves the wait as it was: a pooler in front (its pids are not the backends), a state not visible, the server refusing the check', () => {
    expect(judge({ ...reading({ state: 'idle', since_ms: 60_000 }), ownPid: 99 }, PID, MARGIN).liveness).toBe('unknown');
    expect(judge(reading({ state: null }), PID, MARGIN).liveness).toBe('unknown');
    expect(judge(reading({ state: 'disabled' }), PID, MARGIN).liveness).toBe('unknown');
    expect(judge({ refused: 'sorry, too many clients already' }, PID, MARGIN).liveness).toBe('unknown');
  });
});

describe('backendLiveness (the check as made)', () => {
  it("a server name that does not resolve for the check's connection leaves the wait as it was: the resolver's failure (EAI_AGAIN, a DNS hiccup) says nothing of the server the checked connection is on", async () => {
    // `.invalid` never resolves (RFC 2606): ENOTFOUND, or EAI_AGAIN where no resolver answers.
    const verdict = await backendLiveness('unresolved', { host: 'dealix-liveness-check.invalid', port: 5432, user: 'nobody', database: 'none' }, PID, 10_000, 1_000);
    expect(verdict.liveness).toBe('unknown');
    expect(verdict.seen).toMatch(/resolve/);
  });
});
