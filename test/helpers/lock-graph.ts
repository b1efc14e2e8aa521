import { waitFor } from './poll.ts';

/** Something that runs SQL in the test's database: a pg.Client's `query`, or a TestDatabase's `admin`. */
type Query = (sql: string, params?: unknown[]) => Promise<{ rows: Array<Record<string, unknown>> }>;

/** The backend pid of a connection the test holds (`select pg_backend_pid()` on it). */
export async function backendPid(query: Query): Promise<number> {
  return (await query('select pg_backend_pid() as pid')).rows[0]!.pid as number;
}

/**
 * Polls, with a deadline, until a backend waits for a lock that backend `holder` holds — or is queued
 * behind another waiter for it — as the lock graph says (`pg_blocking_pids`). Returns the blocked
 * backend's pid. Only a backend of the holder's database can wait for its locks, so this is scoped to
 * the test's own database by the holder.
 *
 * The waiters are read from pg_locks (a lock not granted), not pg_stat_activity: pg_stat_activity is
 * read once per transaction (its snapshot kept to the end), so a poll on a connection inside an open
 * transaction — the holder's own — would never see a backend that connected after its first reading.
 *
 * Why not pg_stat_activity's `query` with `wait_event_type = 'Lock'`: a backend that runs a message
 * of several statements (a pipelined prelude and read, the coalescing client's held statements, an
 * extended-protocol batch) may show another statement of that message there while it waits, so a
 * poll on the text never matches; and a poll without the database matches another test file's
 * backend (every test database is a clone of one template: same tables, same relation oids).
 */
export async function blockedBy(query: Query, holder: number, what: string, opts: { timeoutMs?: number; intervalMs?: number } = {}): Promise<number> {
  return waitFor(
    async () =>
      (await query(`select pid from pg_locks where not granted and $1 = any(pg_blocking_pids(pid)) order by pid limit 1`, [holder])).rows[0]?.pid as
        | number
        | undefined,
    { timeoutMs: opts.timeoutMs ?? 30_000, intervalMs: opts.intervalMs, what },
  );
}

/**
 * The backends waiting for `holder` (pg_blocking_pids), directly or behind another such waiter (one
 * that waits for a lock a waiter of `holder` took meanwhile), counted now: for a test that needs n of
 * them waiting, or that checks no one waits. Read from pg_locks, as blockedBy.
 */
export async function countBlockedBy(query: Query, holder: number): Promise<number> {
  return (
    await query(
      `with recursive blocked(pid) as (select distinct pid from pg_locks where not granted),
       waiting(pid) as (
         select pid from blocked where $1 = any(pg_blocking_pids(pid))
         union
         select b.pid from blocked b join waiting w on w.pid = any(pg_blocking_pids(b.pid))
       )
       select count(*)::int as n from waiting`,
      [holder],
    )
  ).rows[0]!.n as number;
}

/** Polls, with a deadline, until at least `n` backends of the test's database wait for `holder` (countBlockedBy). */
export async function blockedByAtLeast(query: Query, holder: number, n: number, what: string, opts: { timeoutMs?: number; intervalMs?: number } = {}): Promise<void> {
  await waitFor(async () => (await countBlockedBy(query, holder)) >= n, { timeoutMs: opts.timeoutMs ?? 30_000, intervalMs: opts.intervalMs, what });
}

/**
 * Polls, with a deadline, until a backend of the test's database waits for a lock held by a backend
 * that is idle in its transaction: a transaction the test holds open at a barrier in code it does not
 * own a connection of (a worker's step, a request). Returns the waiter's pid.
 */
export async function blockedByIdleTransaction(query: Query, what: string, opts: { timeoutMs?: number; intervalMs?: number } = {}): Promise<number> {
  return waitFor(
    async () =>
      (
        await query(
          `select w.pid from pg_stat_activity w
            where w.datname = current_database()
              and exists (select 1 from pg_stat_activity h where h.pid = any(pg_blocking_pids(w.pid)) and h.state = 'idle in transaction')
            order by w.pid limit 1`,
        )
      ).rows[0]?.pid as number | undefined,
    { timeoutMs: opts.timeoutMs ?? 30_000, intervalMs: opts.intervalMs, what },
  );
}
