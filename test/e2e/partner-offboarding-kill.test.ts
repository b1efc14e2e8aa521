/**
 * A worker process SIGKILLed in the middle of an offboarding's step (the production worker entry, no
 * test hooks): the step's write and its checkpoint were one transaction, so nothing of the killed step
 * committed, and another worker resumes the run from its last checkpoint — the checkpoint before the
 * kill is the very same row, every step has one checkpoint, and the partner has one record, archived.
 * The step is held where it writes: the test holds `partner_offboardings` in EXCLUSIVE mode (its
 * statement waits on the lock; nothing else does), and takes the lock again behind step 1's insert so
 * that step 2's update is the one that waits.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, newTenant, OFFBOARDING_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { holdTable } from '../helpers/table-lock.ts';
import { countBlockedBy } from '../helpers/lock-graph.ts';

const LONG = 180_000;
const BASE = '/api/v1/partner-offboarding';

let stack: TestStack;
beforeAll(async () => {
  stack = await startStack();
}, LONG);
afterAll(async () => stack?.stop());

describe('a worker killed in the middle of an offboarding', () => {
  it('is resumed by another worker from the last checkpoint: step 2 runs again, step 1 does not, nothing applied twice', { timeout: LONG }, async () => {
    const token = await stack.token({ tenantId: newTenant(), sub: 'ops-1' });
    const body = { ...OFFBOARDING_SUBMISSION, partner: { reference: `P-${randomUUID().slice(0, 8)}`, name: 'Acme' } };
    const first = await stack.spawnWorker();
    const beforeStep1 = await holdTable(stack.db.ownerUrl, 'partner_offboardings');
    let held: Awaited<ReturnType<typeof holdTable>> | undefined;
    try {
      const res = await api(stack, 'POST', `${BASE}/run`, { token, body, headers: { 'Idempotency-Key': randomUUID() } });
      expect(res.status, res.text).toBe(202);
      const id = res.json.run_id as string;
      await beforeStep1.waiting("step 1's insert to wait for the lock");
      // Queued behind step 1's insert: granted when step 1 commits, before step 2's update asks.
      const next = holdTable(stack.db.ownerUrl, 'partner_offboardings');
      // Both blocked by the first hold, in this database (by the table's name, pg_locks also counted another
      // test file's waiters: its database a clone of the same template, the table the same oid).
      await waitFor(async () => (await countBlockedBy(stack.db.admin, beforeStep1.pid)) >= 2, {
        timeoutMs: 30_000,
        what: 'the second hold to queue behind step 1',
      });
      await beforeStep1.release();
      held = await next;
      await held.waiting("step 2's update to wait for the lock");
      const cps = async () => (await stack.db.admin(`select id, sequence_num, step_name, status, attempt, created_at from durable_checkpoints where run_id = $1 order by sequence_num`, [id])).rows;
      const before = await cps();
      expect(before.map((c) => [c.step_name, c.status])).toEqual([['freeze-partner', 'completed']]);

      first.kill('SIGKILL');
      await first.exited;
      await held.release();
      await stack.spawnWorker();
      const run = await waitFor(
        async () => {
          const r = (await api(stack, 'GET', `${BASE}/runs/${id}`, { token })).json;
          return r?.status === 'completed' || r?.status === 'failed' ? r : undefined;
        },
        { timeoutMs: 120_000, intervalMs: 100, what: 'the offboarding to end on the second worker' },
      );
      expect(run).toMatchObject({ status: 'completed', error: null });
      const after = await cps();
      expect(after[0]).toEqual(before[0]);
      expect(after.map((c) => [c.step_name, c.status])).toEqual([['freeze-partner', 'completed'], ['settle-balances', 'completed'], ['archive-record', 'completed']]);
      const { rows } = await stack.db.admin(`select run_id, status, settlement from partner_offboardings where partner_reference = $1`, [body.partner.reference]);
      expect(rows).toEqual([{ run_id: id, status: 'archived', settlement: run.steps[1].output }]);
    } finally {
      await beforeStep1.close();
      await held?.close();
    }
  });
});
