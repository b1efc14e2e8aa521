import pg from 'pg';
import { waitFor } from './poll.ts';

export interface TableLock {
  /** Polls until some statement waits for the lock. */
  waiting(what: string): Promise<void>;
  /** Commits the holding transaction: the waiting statements go on. */
  release(): Promise<void>;
  /** Rolls back if still held, and disconnects. */
  close(): Promise<void>;
}

/**
 * Holds `table` on a connection of its own, as `url`'s role: in EXCLUSIVE mode by default (reads go
 * on, writes wait), or ACCESS EXCLUSIVE (reads wait too).
 */
export async function holdTable(url: string, table: string, mode: 'exclusive' | 'access exclusive' = 'exclusive'): Promise<TableLock> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  await client.query('begin');
  await client.query(`lock table ${table} in ${mode} mode`);
  let held = true;
  return {
    async waiting(what) {
      await waitFor(
        async () =>
          (await client.query(`select count(*)::int as n from pg_locks l join pg_class c on c.oid = l.relation where c.relname = $1 and not l.granted`, [table])).rows[0].n > 0,
        { timeoutMs: 30_000, what },
      );
    },
    async release() {
      if (!held) return;
      held = false;
      await client.query('commit');
    },
    async close() {
      // Only a transaction still open: a rollback after the commit makes the server log a warning.
      if (held) {
        held = false;
        await client.query('rollback').catch(() => {});
      }
      await client.end();
    },
  };
}
