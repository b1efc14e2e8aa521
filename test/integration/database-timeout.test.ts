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

describe('a statement timeout in a request', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({ env: { DATABASE_STATEMENT_TIMEOUT: '1s' } });
  }, LONG);
  afterAll(async () => stack?.stop());

  it('answers 503 database_timeout with Retry-After (not 500), changes nothing, and frees the key for the retry', { timeout: LONG }, async () => {
    const tok = await runUsers(stack, newTenant());
    const submitted = await api(stack, 'POST', '/api/v1/golden-path/run', { token: tok.submitter, body: CLASS_A_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
    expect(submitted.status, submitted.text).toBe(202);
    const id = submitted.json.run_id as string;
    // Another transaction holds the run row (as a long step or a stuck session would): the cancel's lock waits.
    const holder = new pg.Client({ connectionString: stack.db.adminUrl });
    await holder.connect();
    const key = randomUUID();
    try {
      await holder.query('begin');
      await holder.query('select id from durable_runs where id = $1 for update', [id]);
      const res = await api(stack, 'POST', `/api/v1/golden-path/runs/${id}/cancel`, { token: tok.submitter, headers: { 'Idempotency-Key': key } });
      expect(res.status, res.text).toBe(503);
      expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
      expect(res.headers.get('retry-after')).toBe('2');
      expect(res.json).toMatchObject({ status: 503, code: 'database_timeout' });
    } finally {
      await holder.query('rollback').catch(() => {});
      await holder.end();
    }
    expect((await stack.db.admin('select status from durable_runs where id = $1', [id])).rows[0].status).toBe('pending');
    // The same key again: a fresh attempt (the 503 was not stored), which now cancels.
    const retried = await waitFor(async () => {
      const r = await api(stack, 'POST', `/api/v1/golden-path/runs/${id}/cancel`, { token: tok.submitter, headers: { 'Idempotency-Key': key } });
      return r.status === 200 ? r : undefined;
    }, { timeoutMs: 30_000, what: 'the retry with the same key to cancel the run' });
    expect(retried.headers.get('idempotent-replayed')).toBeNull();
    expect(retried.json).toMatchObject({ run_id: id, status: 'cancelled' });
  });
});
