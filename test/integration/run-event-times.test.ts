/**
 * A run's end is one time wherever it is read: its `completed_at`, its `updated_at` (its last change
 * of status), the `ended_at` of its `run.*` webhook event and that event's envelope `timestamp`
 * (docs/api.md, Webhooks) — and it follows the locks the ending transaction waited for:
 *
 * - an SLA expiry that waited for the run row (a decision or a cancel held it) while the deadline
 *   passed ends the run after that wait, so never before its request expired (at the deadline) — at
 *   now(), its transaction's start, it did;
 * - a step that ends the run commits its checkpoint at the end of its transaction, after its work: the
 *   event's `timestamp` is still the run's `completed_at` (the step's transaction's time), not the
 *   checkpoint statement's later one.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLASS_A_SUBMISSION, runUsers, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { holdRows } from '../helpers/row-lock.ts';
import { startReceiver, submit, tenantWithEndpoint, waitingRunWithEndpoint, waitRun, type Receiver } from '../helpers/webhooks.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { ApprovalService } from '../../src/modules/approvals/approval.service.ts';

const LONG = 120_000;

describe("a run's end and its event's time", () => {
  let stack: TestStack;
  let receiver: Receiver;

  beforeAll(async () => {
    stack = await startStack({ workerEntry: 'test/helpers/test-worker.ts', env: { WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true', DATABASE_POOL_MAX: '4' } });
    receiver = await startReceiver();
    // The golden path's steps behind the test gate: step 4 (the last, which ends the run) first sleeps
    // 20 ms in a statement of its transaction, so by the database's clock its checkpoint statement is
    // later than its transaction's start.
    await stack.spawnWorker({ GP_GATE_GOLDEN_PATH: '1', GP_SLOW_STEP_MS: '0,0,0,tx-20', DATABASE_POOL_MAX: '6' });
  }, LONG);
  afterAll(async () => {
    await receiver?.close();
    await stack?.stop();
  });

  /** The run as stored, with its run.<status> delivery. */
  const ended = async (runId: string) =>
    (
      await stack.db.admin(
        `select r.status, r.completed_at::text as completed_at, r.updated_at::text as updated_at,
                to_char(r.completed_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as completed_iso,
                d.payload->>'timestamp' as timestamp, d.payload->'data'->>'ended_at' as ended_at
           from durable_runs r
           join webhook_deliveries d on d.tenant_id = r.tenant_id and d.event_type = 'run.' || r.status and d.payload->'data'->>'run_id' = r.id::text
          where r.id = $1`,
        [runId],
      )
    ).rows[0] as { status: string; completed_at: string; updated_at: string; completed_iso: string; timestamp: string; ended_at: string };

  it('an expiry that waited for the run row past the deadline ends the run after the wait, its event at that end', { timeout: LONG }, async () => {
    const { tenantId, id, approvalId } = await waitingRunWithEndpoint(stack, receiver, '/expired', ['run.approval_expired']);

    // Another transaction holds the run row (as a decision or a cancel would): the expiry's lock waits for it.
    const holder = await holdRows(stack, 'select 1 from durable_runs where id = $1 for update', [id]);
    try {
      const expiring = tenantEm(stack.container.orm, tenantId).transactional((tx) => new ApprovalService(stack.container.runtime).expire(tx, tenantId, id));
      await holder.waitedFor("the expiry's lock to wait for the holder's");
      // The deadline passes while the expiry waits: after its transaction began (by a millisecond, the
      // deadline's resolution as the API shows it), before the release.
      await holder.client.query(`update approval_requests set sla_deadline = date_trunc('milliseconds', clock_timestamp()) where id = $1`, [approvalId]);
      const released = await holder.release();
      const result = await expiring;
      expect(result.outcome).toBe('expired');
      if (result.outcome === 'expired') await result.afterCommit();

      const [stored] = (
        await stack.db.admin(
          `select r.status, r.completed_at >= $2::timestamptz as run_after, r.completed_at >= a.decided_at as run_after_request,
                  c.completed_at >= $2::timestamptz as step_after, a.status as request_status, a.decided_at = a.sla_deadline as request_at_deadline,
                  r.completed_at::text as completed_at, a.decided_at::text as decided_at, $2::text as released
             from durable_runs r join approval_requests a on a.run_id = r.id
             join durable_checkpoints c on c.tenant_id = r.tenant_id and c.run_id = r.id and c.sequence_num = 3
            where r.id = $1 and a.id = $3`,
          [id, released, approvalId],
        )
      ).rows;
      expect(stored).toMatchObject({ status: 'approval_expired', request_status: 'expired', request_at_deadline: true, run_after: true, run_after_request: true, step_after: true });
      // One time for the run's end: completed_at, updated_at, the event's ended_at and timestamp.
      const run = await ended(id);
      expect(run.updated_at).toBe(run.completed_at);
      expect(run.ended_at).toBe(run.completed_iso);
      expect(run.timestamp).toBe(run.ended_at);
    } finally {
      await holder.close();
    }
  });

  it("a run ended by its last step: its run.completed event's timestamp is its ended_at, the run's completed_at", { timeout: LONG }, async () => {
    const { tenantId } = await tenantWithEndpoint(stack, receiver, '/completed', ['run.completed']);
    const tok = await runUsers(stack, tenantId);
    const id = await submit(stack, tok.submitter, CLASS_A_SUBMISSION);
    const done = await waitRun(stack, tok.submitter, id, ['completed', 'failed']);
    expect(done.status).toBe('completed');
    const run = await waitFor(async () => (await ended(id).catch(() => undefined)) ?? undefined, { timeoutMs: 30_000, what: 'the run.completed delivery' });
    expect(run.ended_at).toBe(run.completed_iso);
    expect(run.timestamp).toBe(run.ended_at);
  });
});
