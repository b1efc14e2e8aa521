import pg from 'pg';
import { waitFor } from './poll.ts';
import type { TestStack } from './stack.ts';

export interface RowLock {
  /** The holding connection, inside its transaction (e.g. to change the row before the release). */
  client: pg.Client;
  /**
   * Polls until a statement waits for this transaction's locks (pg_blocking_pids), then until the
   * database's clock is a millisecond (the API's resolution) past that waiting transaction's start.
   */
  waitedFor(what: string): Promise<void>;
  /** Commits the holding transaction; returns the database's clock read just before (the release point, timestamptz text). */
  release(): Promise<string>;
  /** Rolls back if still held, and disconnects. */
  close(): Promise<void>;
}

/**
 * Holds the rows `lockSql` locks (e.g. `select 1 from durable_runs where id = $1 for update`) in a
 * transaction of its own, as the admin role: what a decision, a cancel or a PUT holding them would
 * make another transaction wait for. Close it in a `finally`.
 */
export async function holdRows(stack: TestStack, lockSql: string, params: unknown[]): Promise<RowLock> {
  const client = new pg.Client({ connectionString: stack.db.adminUrl });
  await client.connect();
  let held = false;
  const close = async () => {
    if (held) await client.query('rollback').catch(() => {});
    held = false;
    await client.end();
  };
  try {
    await client.query('begin');
    held = true;
    await client.query(lockSql, params);
  } catch (e) {
    await close();
    throw e;
  }
  const pid = (await client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
  return {
    client,
    async waitedFor(what) {
      const blockedXactStart = await waitFor(
        async () => (await stack.db.admin(`select xact_start from pg_stat_activity where $1 = any(pg_blocking_pids(pid))`, [pid])).rows[0]?.xact_start as Date | undefined,
        { timeoutMs: 30_000, what },
      );
      await waitFor(
        async () => (await client.query<{ past: boolean }>(`select date_trunc('milliseconds', clock_timestamp()) > $1::timestamptz as past`, [blockedXactStart])).rows[0]!.past || undefined,
        { timeoutMs: 10_000, intervalMs: 1, what: "the database clock to move past the waiting transaction's start" },
      );
    },
    async release() {
      const at = (await client.query<{ at: string }>('select clock_timestamp()::text as at')).rows[0]!.at;
      await client.query('commit');
      held = false;
      return at;
    },
    close,
  };
}
