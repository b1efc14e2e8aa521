import pg from 'pg';
import { endWithin, isUnreachable } from './connection-bounds.ts';

/**
 * Whether the PostgreSQL backend of a connection whose answer is overdue is still at work on it, asked
 * out of band: a fresh, short-lived connection to the same server as the same role reads the backend's
 * row of `pg_stat_activity` (coalescing-client.ts calls it when a message of several statements has
 * been silent for one statement's bound, never otherwise).
 *
 * A role that is not a superuser sees every session's pid, but the state, wait event and query only of
 * the sessions of roles it has the privileges of — its own: the check connects with the connection's
 * own settings, so as the role whose backend it looks for (the application role, unchanged).
 *
 * - `working`: the backend runs a statement (`active`, not waiting on its client's socket): a lock, a
 *   deferred check at commit, a long read. Keep waiting.
 * - `unsure`: the backend finished less than the margin ago (its answer may be on its way), or it is
 *   active but waits on its socket — to read the rest of the message or to write its answers, both of
 *   which a working network ends at once. Ask again after the margin.
 * - `dead`: the backend is gone, or has been idle for the margin or longer (its answer left and never
 *   arrived, or the message never reached it), or the server could not be reached or did not answer
 *   the check within `withinMs` (a connection refused or reset, nothing heard).
 * - `unknown`: the check cannot tell — the pids the server sends are not its backends' (a pooler such
 *   as PgBouncer in front: BackendKeyData is the pooler's), the row's state is not visible (activity
 *   tracking off), the server refused the check with an error of its own (max_connections reached,
 *   starting up), or the server's name did not resolve for the check (a DNS failure says nothing of the
 *   server the connection is on). Keep waiting, as before the check existed (the caller still bounds the whole wait).
 */
export type Liveness = 'working' | 'unsure' | 'dead' | 'unknown';

export interface LivenessVerdict {
  liveness: Liveness;
  /** What was seen, for the error a `dead` verdict becomes. */
  seen: string;
}

/** A backend's row as the check reads it. */
export interface Activity {
  pid: number;
  /** Null: not visible to this role, or tracking is off. */
  state: string | null;
  wait_event_type: string | null;
  /** Milliseconds since the state last changed (the server's clock). */
  since_ms: number | null;
  /** The check's own backend. */
  me: boolean;
}

/** What the check's connection got: every client backend's row and its own pid as BackendKeyData gave it, or no answer. */
export type Reading = { rows: Activity[]; ownPid: number | null } | { unreachable: string } | { refused: string } | { unresolved: string };

/** The resolver's failures: the check's connection never tried the server (the checked connection has its address already). */
const UNRESOLVED_CODES = new Set(['ENOTFOUND', 'EAI_AGAIN']);

// Every client backend, so that one reading serves every connection of the process that asks meanwhile.
const ACTIVITY = `select pid, state, wait_event_type, (extract(epoch from clock_timestamp() - state_change) * 1000)::float8 as since_ms, pid = pg_backend_pid() as me
  from pg_catalog.pg_stat_activity where backend_type = 'client backend'`;

/** Judges `pid`'s row in a reading (exported for unit tests). */
export function judge(reading: Reading, pid: number, marginMs: number): LivenessVerdict {
  if ('unreachable' in reading) return { liveness: 'dead', seen: `the server gave the liveness check no answer (${reading.unreachable})` };
  if ('refused' in reading) return { liveness: 'unknown', seen: `the server refused the liveness check (${reading.refused})` };
  if ('unresolved' in reading) return { liveness: 'unknown', seen: `the liveness check could not resolve the server's name (${reading.unresolved})` };
  const me = reading.rows.find((r) => r.me);
  if (!me || me.pid !== reading.ownPid) return { liveness: 'unknown', seen: "pids are not the server's own (a pooler in front)" };
  const row = reading.rows.find((r) => r.pid === pid);
  if (!row) return { liveness: 'dead', seen: `the liveness check found backend ${pid} gone` };
  if (row.state === null || row.state === 'disabled') return { liveness: 'unknown', seen: `backend ${pid}'s state is not visible` };
  const since = Math.round(row.since_ms ?? 0);
  if (row.state === 'active' || row.state === 'fastpath function call') {
    if (row.wait_event_type === 'Client') return { liveness: 'unsure', seen: `the liveness check found backend ${pid} waiting on its socket` };
    return { liveness: 'working', seen: `backend ${pid} ${row.state}` };
  }
  if (since < marginMs) return { liveness: 'unsure', seen: `the liveness check found backend ${pid} ${row.state} for ${since} ms` };
  return { liveness: 'dead', seen: `the liveness check found backend ${pid} ${row.state} for ${since} ms` };
}

/**
 * Reads pg_stat_activity on a connection of its own made with `config`, all within `withinMs` (connect
 * and answer; past it the socket is destroyed): a server that does not answer is `unreachable`.
 */
async function readActivity(config: pg.ClientConfig, withinMs: number, marginMs: number): Promise<Reading> {
  // Not the pool's connect bound (connectionTimeoutMillis, 5 s): a server slow to take a connection
  // (a fork, an authentication under load) whose backend is at work would have its connection dropped
  // as one that gave no answer; the check's own timer bounds connecting and reading together.
  const client = new pg.Client({ ...config, connectionTimeoutMillis: 0 });
  client.on('error', () => {});
  let late = false;
  const timer = setTimeout(() => {
    late = true;
    (client as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
  }, withinMs).unref();
  try {
    await client.connect();
    const { rows } = await client.query<Activity>(ACTIVITY);
    return { rows, ownPid: (client as unknown as { processID: number | null }).processID };
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    if (late) return { unreachable: `nothing within ${withinMs} ms` };
    if (UNRESOLVED_CODES.has((e as { code?: unknown } | null)?.code as string)) return { unresolved: message };
    return isUnreachable(e) ? { unreachable: message } : { refused: message };
  } finally {
    clearTimeout(timer);
    void endWithin(client, () => client.end(), marginMs).catch(() => {});
  }
}

/** Readings in flight, per server and role: connections of a process that ask at once share one check connection. */
const inFlight = new Map<string, Promise<Reading>>();

/**
 * The liveness of backend `pid` on the server `config` connects to, read on one short-lived connection
 * (`key`: the server, database and role, so that the process makes one at a time per server and
 * role; one that asks while a reading is in flight gets that reading). Never rejects.
 */
export async function backendLiveness(key: string, config: pg.ClientConfig, pid: number, withinMs: number, marginMs: number): Promise<LivenessVerdict> {
  let reading = inFlight.get(key);
  if (!reading) {
    const read = readActivity(config, withinMs, marginMs).finally(() => {
      if (inFlight.get(key) === read) inFlight.delete(key);
    });
    inFlight.set(key, read);
    reading = read;
  }
  return judge(await reading, pid, marginMs);
}
