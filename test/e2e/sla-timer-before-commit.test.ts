import { afterAll, beforeAll, expect, it } from 'vitest';
import { api, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { submitWithRequestHeld } from '../helpers/held-request.ts';

/**
 * The approval step schedules the SLA timer before its transaction commits (approval-packet.step.ts),
 * with a deadline counted from the policy prefetch's read: a short SLA, or a slow step, makes the timer
 * fire while the request is not yet committed. It must not be spent then: the run would wait for good,
 * until a sweep re-created the timer. No sweeper here (an hour between sweeps, runs an hour old).
 */
let stack: TestStack;
const DEADLINE = { timeoutMs: 60_000, intervalMs: 100 };

beforeAll(async () => {
  stack = await startStack({ env: { SWEEPER_INTERVAL: '1h', SWEEPER_MIN_AGE: '1h' } });
  await stack.spawnWorker();
});
afterAll(async () => stack?.stop());

it('a timer that fires before the approval step commits its request is put off, not spent: the run still expires at its SLA, with no sweep', { timeout: 200_000 }, async () => {
  const { runId, submitter, holder } = await submitWithRequestHeld(stack, DEADLINE);
  try {
    // Its timer, due one second after the policy read, fires meanwhile and meets no request.
    const queue = stack.container.queues.get('timers')!;
    await waitFor(
      async () => {
        const [timer] = (await queue.getJobs(['delayed', 'wait', 'active', 'completed', 'failed'])).filter((j) => j.name === 'approval-sla' && j.data.run_id === runId);
        if (!timer || timer.attemptsStarted < 1) return undefined;
        return (await timer.getState()) === 'active' ? undefined : timer;
      },
      { ...DEADLINE, what: 'the SLA timer to fire while the request is uncommitted' },
    );
    expect((await stack.db.admin(`select count(*)::int as n from approval_requests where run_id = $1`, [runId])).rows[0].n).toBe(0);
    await holder.query('commit');
    const run = await waitFor(
      async () => {
        const r = (await api(stack, 'GET', `/api/v1/golden-path/runs/${runId}`, { token: submitter })).json;
        return ['approval_expired', 'completed', 'failed'].includes(r?.status) ? r : undefined;
      },
      { ...DEADLINE, what: 'the run to end approval_expired' },
    );
    expect(run.status).toBe('approval_expired');
    expect(run.steps[2].output).toMatchObject({ approval_class: 'B', outcome: 'expired' });
  } finally {
    await holder.query('rollback').catch(() => {});
    await holder.end();
  }
});
