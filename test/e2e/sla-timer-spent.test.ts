import { afterAll, beforeAll, expect, it } from 'vitest';
import { api, startStack, type TestStack, type WorkerHandle } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { submitWithRequestHeld } from '../helpers/held-request.ts';
import { jsonLines } from '../helpers/api-process.ts';

/**
 * An SLA timer that fires before the approval step commits its request is put off at most
 * SLA_NO_REQUEST_DEFERRALS times (sla-timer-before-commit.test.ts), then spent. When the request
 * commits after that (a step's commit held longer than the deferrals last), the run waits with a
 * spent timer: that must not be a silent hang — the give-up is logged and counted, and the sweeper
 * re-creates the timer once the run waits, which expires the run (its deadline long past). The bound is
 * lowered to 2 here (SLA_NO_REQUEST_DEFERRALS), so the timer is spent within seconds, with no sleep.
 */
let stack: TestStack;
let worker: WorkerHandle;
const DEADLINE = { timeoutMs: 90_000, intervalMs: 100 };
const SPENT = "SLA timer spent: its run still had no approval request after SLA_NO_REQUEST_DEFERRALS deferrals; the approval step's retry schedules it again, or the sweeper re-creates it once the run waits";
const REPAIRED = 'sweeper repaired a waiting run whose timer was gone';

beforeAll(async () => {
  // The stack's sweeper settings (every second, runs 2 s old): the repair comes within seconds of the commit.
  stack = await startStack();
  // A statement timeout far past the test's hold: step 3's commit waits for the lock, it does not roll back and retry.
  worker = await stack.spawnWorker({ SLA_NO_REQUEST_DEFERRALS: '2', WORKER_METRICS_PORT: '0', DATABASE_STATEMENT_TIMEOUT: '10m' });
});
afterAll(async () => stack?.stop());

const linesOf = (msg: string, runId: string) => jsonLines(worker.output()).filter((l) => l.msg === msg && l.run_id === runId);
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

it('a timer spent after its no_request deferrals is reported, and the sweeper re-creates it once the request commits: the run still expires', { timeout: 300_000 }, async () => {
  const { runId, submitter, holder } = await submitWithRequestHeld(stack, DEADLINE);
  try {
    // The timer fires, meets no request, is put off twice, and is spent at its third firing.
    const queue = stack.container.queues.get('timers')!;
    const timer = await waitFor(
      async () => {
        const [t] = (await queue.getJobs(['completed', 'failed'])).filter((j) => j.name === 'approval-sla' && j.data.run_id === runId);
        return t;
      },
      { ...DEADLINE, what: 'the SLA timer to be spent while the request is uncommitted' },
    );
    expect(await timer.getState()).toBe('completed');
    expect(timer.returnvalue).toEqual({ outcome: 'no_request' });
    expect(timer.data.no_request_deferrals).toBe(2);
    expect((await stack.db.admin(`select count(*)::int as n from approval_requests where run_id = $1`, [runId])).rows[0].n).toBe(0);
    // Not silent: one warning naming the run, and the counter.
    await waitFor(() => linesOf(SPENT, runId).length > 0, { ...DEADLINE, what: 'the spent timer warning' });
    expect(linesOf(SPENT, runId)).toHaveLength(1);
    expect(linesOf(SPENT, runId)[0]).toMatchObject({ level: 40, no_request_deferrals: 2, tenant_id: expect.any(String) });
    const port = await waitFor(() => jsonLines(worker.output()).find((l) => l.msg === 'worker metrics listening')?.metrics_port, { ...DEADLINE, what: 'the worker metrics port' });
    expect(sample(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text(), 'dealix_sla_timers_spent_total')).toBeGreaterThanOrEqual(1);

    // The request commits now: the run waits, its timer spent, its deadline past.
    await holder.query('commit');
    const run = await waitFor(
      async () => {
        const r = (await api(stack, 'GET', `/api/v1/golden-path/runs/${runId}`, { token: submitter })).json;
        return ['approval_expired', 'completed', 'failed', 'cancelled'].includes(r?.status) ? r : undefined;
      },
      { ...DEADLINE, what: 'the run to end approval_expired' },
    );
    expect(run.status).toBe('approval_expired');
    expect(run.steps[2].output).toMatchObject({ approval_class: 'B', outcome: 'expired' });
    // By the sweeper's repair (nothing else schedules a timer for a run whose step committed), and at its deadline.
    // Waited for: the worker's log is buffered (flushed every 100 ms), and the re-created timer, its deadline
    // past, can expire the run before the repair's line reaches the output (final CI, under load).
    await waitFor(() => linesOf(REPAIRED, runId).length >= 1, { ...DEADLINE, what: "the sweeper's repair line" });
    const [request] = (await stack.db.admin(`select status, decided_at = sla_deadline as at_deadline from approval_requests where run_id = $1`, [runId])).rows;
    expect(request).toEqual({ status: 'expired', at_deadline: true });
  } finally {
    await holder.query('rollback').catch(() => {});
    await holder.end();
  }
});
