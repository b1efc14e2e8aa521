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
import { api, type TestStack } from '../helpers/stack.ts';
import { holdRows } from '../helpers/row-lock.ts';
import { startWebhookStack, stopWebhookStack, waitingRunWithEndpoint, type Receiver } from '../helpers/webhooks.ts';

const LONG = 120_000;

describe('a cancel that waited for the run row lock', () => {
  let stack: TestStack;
  let receiver: Receiver;

  beforeAll(async () => {
    ({ stack, receiver } = await startWebhookStack({ DATABASE_POOL_MAX: '4' }, { DATABASE_POOL_MAX: '6' }));
  }, LONG);
  afterAll(() => stopWebhookStack(stack, receiver));

  it('stamps the run, its withdrawn request and its run.cancelled delivery after the wait', { timeout: LONG }, async () => {
    const { tok, id, approvalId } = await waitingRunWithEndpoint(stack, receiver, '/cancelled', ['run.cancelled']);

    // Another transaction holds the run row (as a decision or a step would): the cancel's lock waits for it.
    const holder = await holdRows(stack, 'select 1 from durable_runs where id = $1 for update', [id]);
    try {
      const cancel = api(stack, 'POST', `/api/v1/golden-path/runs/${id}/cancel`, { token: tok.submitter, headers: { 'Idempotency-Key': randomUUID() } });
      await holder.waitedFor("the cancel's lock to wait for the holder's");
      // The release point, by the database's clock, read just before the release, a millisecond (the
      // API's and the deliveries' resolution) past the waiting transaction's start.
      const released = await holder.release();
      const res = await cancel;
      expect(res.status, res.text).toBe(200);
      expect(res.json).toMatchObject({ status: 'cancelled' });

      const [stored] = (
        await stack.db.admin(
          `select r.completed_at >= $2::timestamptz as run_after, (r.error->>'cancelled_at')::timestamptz >= date_trunc('milliseconds', $2::timestamptz) as cancelled_at_after,
                  a.status as request_status, a.decided_at >= $2::timestamptz as request_after,
                  d.created_at >= date_trunc('milliseconds', $2::timestamptz) as delivery_after,
                  (d.payload->>'timestamp')::timestamptz >= date_trunc('milliseconds', $2::timestamptz) as envelope_after,
                  r.completed_at::text as completed_at, r.updated_at::text as updated_at, a.decided_at::text as decided_at,
                  to_char(r.completed_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as completed_iso,
                  d.payload->>'timestamp' as envelope_timestamp, d.payload->'data'->>'ended_at' as ended_at, d.created_at::text as delivery_created_at, $2::text as released
             from durable_runs r join approval_requests a on a.run_id = r.id
             join webhook_deliveries d on d.tenant_id = r.tenant_id and d.event_type = 'run.cancelled' and d.payload->'data'->>'run_id' = r.id::text
            where r.id = $1 and a.id = $3`,
          [id, released, approvalId],
        )
      ).rows;
      expect(stored).toMatchObject({ request_status: 'withdrawn', run_after: true, cancelled_at_after: true, request_after: true, delivery_after: true, envelope_after: true });
      // Still one time of the cancel (docs/api.md): the run's completed_at, its cancelled_at and the request's decided_at.
      expect(stored.decided_at).toBe(stored.completed_at);
      // Its last change of status is its end (docs/api.md, updated_at), and its event says so.
      expect(stored.updated_at).toBe(stored.completed_at);
      expect(stored.ended_at).toBe(stored.completed_iso);
      expect(stored.envelope_timestamp).toBe(stored.ended_at);
      expect(res.json.error.cancelled_at).toBe(res.json.completed_at);
    } finally {
      await holder.close();
    }
  });
});
