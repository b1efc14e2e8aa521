import pg from 'pg';
import { backendPid, blockedBy } from './lock-graph.ts';

export interface TableLock {
  /** The holding connection's backend pid (the lock graph's holder: lock-graph.ts). */
  pid: number;
  /** Polls until some backend of the test's database waits for the lock (the lock graph: blocked by the holder); its pid. */
  waiting(what: string): Promise<number>;
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
  const holder = await backendPid((sql, params) => client.query(sql, params));
  let held = true;
  return {
    pid: holder,
    async waiting(what) {
      // Not pg_locks by the table's name: every test database is a clone of one template, so its tables
      // have the same oids in another test file's database, whose waiters that join counted too.
      return blockedBy((sql, params) => client.query(sql, params), holder, what);
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
