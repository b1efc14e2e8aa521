/**
 * A request whose statement waits out DATABASE_STATEMENT_TIMEOUT — here behind a row lock another
 * transaction holds — is busy, not broken: 503 `database_timeout` with Retry-After, nothing stored,
 * and its Idempotency-Key released, so the client's retry with the same key goes through once the
 * lock is gone. Real stack: PostgreSQL as the application role, Redis; no worker (the run stays pending).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { api, CLASS_A_SUBMISSION, newTenant, runUsers, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';

const LONG = 120_000;

/**
 * A pending run of a new tenant, its row locked `for update` by another session (as a long step or a
 * stuck operator session would hold it), and a cancel of it that waits for that lock. `whileHeld` runs
 * with the cancel's answer under way; the holder rolls back after it. `cancel` sends it again, with the same key.
 */
async function cancelBehindHeldRow(stack: TestStack, whileHeld: (answer: ReturnType<typeof api>, holder: pg.Client) => Promise<void>) {
  const tok = await runUsers(stack, newTenant());
  const submitted = await api(stack, 'POST', '/api/v1/golden-path/run', { token: tok.submitter, body: CLASS_A_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
  expect(submitted.status, submitted.text).toBe(202);
  const id = submitted.json.run_id as string;
  const key = randomUUID();
  const cancel = () => api(stack, 'POST', `/api/v1/golden-path/runs/${id}/cancel`, { token: tok.submitter, headers: { 'Idempotency-Key': key } });
  const holder = new pg.Client({ connectionString: stack.db.adminUrl });
  await holder.connect();
  try {
    await holder.query('begin');
    await holder.query('select id from durable_runs where id = $1 for update', [id]);
    await whileHeld(cancel(), holder);
  } finally {
    await holder.query('rollback').catch(() => {});
    await holder.end();
  }
  expect((await stack.db.admin('select status from durable_runs where id = $1', [id])).rows[0].status).toBe('pending');
  return { id, cancel };
}

/** The 503 a request whose statement was cancelled answers: retryable, after Retry-After, nothing stored. */
function expectDatabaseTimeout(res: Awaited<ReturnType<typeof api>>): void {
  expect(res.status, res.text).toBe(503);
  expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  expect(res.headers.get('retry-after')).toBe('2');
  expect(res.json).toMatchObject({ status: 503, code: 'database_timeout' });
}

describe('a statement timeout in a request', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({ env: { DATABASE_STATEMENT_TIMEOUT: '1s' } });
  }, LONG);
  afterAll(async () => stack?.stop());

  it('answers 503 database_timeout with Retry-After (not 500), changes nothing, and frees the key for the retry', { timeout: LONG }, async () => {
    const { id, cancel } = await cancelBehindHeldRow(stack, async (answer) => expectDatabaseTimeout(await answer));
    // The same key again: a fresh attempt (the 503 was not stored), which now cancels.
    const retried = await waitFor(async () => {
      const r = await cancel();
      return r.status === 200 ? r : undefined;
    }, { timeoutMs: 30_000, what: 'the retry with the same key to cancel the run' });
    expect(retried.headers.get('idempotent-replayed')).toBeNull();
    expect(retried.json).toMatchObject({ run_id: id, status: 'cancelled' });
  });
});

describe("an operator's pg_cancel_backend of a request's statement", () => {
  let stack: TestStack;
  // The default statement timeout (30 s): the statement is cancelled by the operator, long before it.
  beforeAll(async () => {
    stack = await startStack();
  }, LONG);
  afterAll(async () => stack?.stop());

  it('answers as a statement timeout does (the same SQLSTATE 57014): 503 database_timeout, nothing changed, the key free for the retry', { timeout: LONG }, async () => {
    const { id, cancel } = await cancelBehindHeldRow(stack, async (answer, holder) => {
      // The cancel's statement waits for the row lock the holder has; the operator cancels it.
      const waiter = await waitFor(async () => {
        const { rows } = await stack.db.admin('select pid from pg_stat_activity where $1 = any(pg_blocking_pids(pid))', [(await holder.query('select pg_backend_pid() as pid')).rows[0].pid]);
        return (rows[0] as { pid: number } | undefined)?.pid;
      }, { timeoutMs: 20_000, what: "the cancel's statement to wait for the held run row" });
      expect((await stack.db.admin('select pg_cancel_backend($1) as ok', [waiter])).rows[0].ok).toBe(true);
      expectDatabaseTimeout(await answer);
    });
    const retried = await cancel();
    expect(retried.status, retried.text).toBe(200);
    expect(retried.headers.get('idempotent-replayed')).toBeNull();
    expect(retried.json).toMatchObject({ run_id: id, status: 'cancelled' });
  });
});
