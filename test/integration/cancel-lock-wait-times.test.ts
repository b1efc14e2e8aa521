/**
 * A cancel whose lock of the run waited (another transaction held the row `for update`) stamps what
 * it writes with the time after that wait, not with now() — its transaction's start, before the
 * wait: the run's `completed_at` (its error's `cancelled_at`), the withdrawn approval request's
 * `decided_at`, and the `run.cancelled` webhook delivery's `created_at` (and its envelope's
 * `timestamp`). Stamped at now(), a cancel that waited behind a decision was recorded before the
 * decision it waited for and followed.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { api, runUsers, SAMPLE_SUBMISSION, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { startWebhookStack, stopWebhookStack, submit, tenantWithEndpoint, waitRun, type Receiver } from '../helpers/webhooks.ts';

const LONG = 120_000;

describe('a cancel that waited for the run row lock', () => {
  let stack: TestStack;
  let receiver: Receiver;

  beforeAll(async () => {
    ({ stack, receiver } = await startWebhookStack({ DATABASE_POOL_MAX: '4' }, { DATABASE_POOL_MAX: '6' }));
  }, LONG);
  afterAll(() => stopWebhookStack(stack, receiver));

  it('stamps the run, its withdrawn request and its run.cancelled delivery after the wait', { timeout: LONG }, async () => {
    const { tenantId } = await tenantWithEndpoint(stack, receiver, '/cancelled', ['run.cancelled']);
    const tok = await runUsers(stack, tenantId);
    const id = await submit(stack, tok.submitter, SAMPLE_SUBMISSION);
    const waiting = await waitRun(stack, tok.submitter, id, ['waiting', 'failed', 'completed']);
    expect(waiting.status).toBe('waiting');
    const approvalId = waiting.steps[2].output.approval_request_id as string;

    // Another transaction holds the run row (as a decision or a step would): the cancel's lock waits for it.
    const holder = new pg.Client({ connectionString: stack.db.adminUrl });
    await holder.connect();
    let open = false;
    try {
      await holder.query('begin');
      open = true;
      await holder.query('select 1 from durable_runs where id = $1 for update', [id]);
      const holderPid = (await holder.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
      const cancel = api(stack, 'POST', `/api/v1/golden-path/runs/${id}/cancel`, { token: tok.submitter, headers: { 'Idempotency-Key': randomUUID() } });
      const blockedXactStart = await waitFor(
        async () =>
          (await stack.db.admin(`select xact_start from pg_stat_activity where $1 = any(pg_blocking_pids(pid))`, [holderPid])).rows[0]?.xact_start as Date | undefined,
        { timeoutMs: 30_000, what: "the cancel's lock to wait for the holder's" },
      );
      // The release point, by the database's clock, read just before the release: polled until it is a
      // millisecond (the API's and the deliveries' resolution) past the waiting transaction's start.
      const released = await waitFor(
        async () => {
          const row = (await holder.query<{ at: string; past: boolean }>(`select clock_timestamp()::text as at, date_trunc('milliseconds', clock_timestamp()) > $1::timestamptz as past`, [blockedXactStart])).rows[0]!;
          return row.past ? row.at : undefined;
        },
        { timeoutMs: 10_000, intervalMs: 1, what: 'the database clock to move past the waiting transaction\'s start' },
      );
      await holder.query('commit');
      open = false;
      const res = await cancel;
      expect(res.status, res.text).toBe(200);
      expect(res.json).toMatchObject({ status: 'cancelled' });

      const [stored] = (
        await stack.db.admin(
          `select r.completed_at >= $2::timestamptz as run_after, (r.error->>'cancelled_at')::timestamptz >= date_trunc('milliseconds', $2::timestamptz) as cancelled_at_after,
                  a.status as request_status, a.decided_at >= $2::timestamptz as request_after,
                  d.created_at >= date_trunc('milliseconds', $2::timestamptz) as delivery_after,
                  (d.payload->>'timestamp')::timestamptz >= date_trunc('milliseconds', $2::timestamptz) as envelope_after,
                  r.completed_at::text as completed_at, a.decided_at::text as decided_at, d.created_at::text as delivery_created_at, $2::text as released
             from durable_runs r join approval_requests a on a.run_id = r.id
             join webhook_deliveries d on d.tenant_id = r.tenant_id and d.event_type = 'run.cancelled' and d.payload->'data'->>'run_id' = r.id::text
            where r.id = $1 and a.id = $3`,
          [id, released, approvalId],
        )
      ).rows;
      expect(stored).toMatchObject({ request_status: 'withdrawn', run_after: true, cancelled_at_after: true, request_after: true, delivery_after: true, envelope_after: true });
      // Still one time of the cancel (docs/api.md): the run's completed_at, its cancelled_at and the request's decided_at.
      expect(stored.decided_at).toBe(stored.completed_at);
      expect(res.json.error.cancelled_at).toBe(res.json.completed_at);
    } finally {
      if (open) await holder.query('rollback').catch(() => {});
      await holder.end();
    }
  });
});
