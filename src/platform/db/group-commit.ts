import { AsyncLocalStorage } from 'node:async_hooks';
import type pg from 'pg';
import { context, ROOT_CONTEXT } from '@opentelemetry/api';
import { completedBefore, type Statement } from './statement-batch.ts';
import { DEFER_UNTIL_NEXT, LAST_IN_TRANSACTION } from './markers.ts';
import { TENANT_SETTING } from './tenant-owned.ts';

/**
 * Group commit across transactions of one process (ADR 0007): whole transactions that are ready to
 * go as one message each (`begin; set_config(tenant); <writes>; <last statement>; commit`, see
 * coalescing-client.ts) and arrive while earlier ones are still on their way to PostgreSQL are sent
 * together as ONE transaction, on one of their connections:
 *
 *   begin; set_config(A); <A's writes>; set_config(B); <B's writes>; …; commit
 *
 * one round trip, one commit and one WAL flush for all of them, instead of one each. Each member's
 * statements run after its own `set_config`, so row-level security checks each against its own
 * tenant, exactly as in a transaction of its own; each gets back the results its statements would
 * have had alone. If the merged transaction fails, nothing of it committed: its connection is rolled
 * back and every member is sent again alone, on its own connection, so each ends as it would have
 * without the grouping (the failing one fails, the others commit). That holds for a failure that
 * PostgreSQL reports (an SQLSTATE) before the group's commit completed; any other failure (the
 * connection lost, a result that cannot be read) leaves the group's outcome unknown, and every
 * member gets the error, as a transaction of its own would. A transaction goes at once while fewer
 * than `maxInFlight` messages are on their way; those that arrive meanwhile wait for a slot and go
 * together (as PostgreSQL groups WAL flushes of concurrent commits).
 *
 * Only these are grouped (`groupKey`): the message begins with `begin` and the tenant's
 * `select set_config(…, true)` (the same settings, by name, for every member, `app.tenant_id` among
 * them, so each member overrides all its predecessor set), ends with `commit`, and everything in
 * between is a statement the platform itself marked as held or last (`DEFER_UNTIL_NEXT`,
 * `LAST_IN_TRANSACTION`: step inserts, checkpoints, a run's insert, a stored response), one
 * statement each and sent as a prepared statement (so each returns exactly one result).
 */
export interface GroupMember {
  /** The transaction's whole message: `begin`, the settings, its statements, `commit`. */
  statements: Statement[];
  /** Sends statements as one message on the member's own connection (what it would have done alone). */
  send(statements: Statement[]): Promise<pg.QueryResult[]>;
  /** False once the member's connection is known to be gone: it must not carry a group, whose members would all fail with it. */
  connected?(): boolean;
}

interface Queued extends GroupMember {
  key: string;
  resolve(results: pg.QueryResult[]): void;
  reject(err: unknown): void;
  /** Runs `fn` in the async context the member submitted from (its trace, its request): what it sends alone is recorded there. */
  inOwnContext: <R>(fn: () => R) => R;
}

const SETTINGS = /^select set_config\(\$1, \$2, true\)(?:, set_config\(\$\d+, \$\d+, true\))*$/i;
/**
 * What a marked statement must still not contain: anything that changes the session or outlives the
 * statement, and advisory locks of any kind — a transaction-level one too: two members taking it in one
 * group take it in one transaction, where it is re-entrant, so they would not exclude each other.
 */
const SESSION_CHANGING = /\b(?:set_config|set\s+(?:local\s+)?(?:role|session)|reset|savepoint|pg_(?:try_)?advisory_(?:xact_)?lock(?:_shared)?|deallocate|declare|listen|notify|temp(?:orary)?\s+table)\b/i;
const MARKED = (text: string) => text.startsWith(DEFER_UNTIL_NEXT) || text.startsWith(LAST_IN_TRANSACTION);

export interface GroupCommitOptions {
  /** Messages on their way at once; a transaction arriving while this many are out waits to be grouped. */
  maxInFlight: number;
  /** Members of one grouped transaction at most. */
  maxMembers: number;
}

export const DEFAULT_GROUP_COMMIT: GroupCommitOptions = { maxInFlight: 2, maxMembers: 16 };

/** A PostgreSQL error code (SQLSTATE: five digits or upper-case letters), not a Node socket error's (ECONNRESET). */
const isSqlState = (code: unknown): boolean => typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code);

/** The grouping key of a whole-transaction message (its settings' names), or undefined when it must go alone. */
export function groupKey(statements: readonly Statement[]): string | undefined {
  const [first, settings] = statements;
  const last = statements[statements.length - 1];
  if (statements.length < 4 || first!.text !== 'begin' || last!.text !== 'commit') return undefined;
  if (!SETTINGS.test(settings!.text) || !settings!.values) return undefined;
  const names = settings!.values.filter((_, i) => i % 2 === 0);
  if (names.length * 2 !== settings!.values.length || !names.includes(TENANT_SETTING) || !names.every((n) => typeof n === 'string' && /^[a-z0-9_.]+$/.test(n))) return undefined;
  for (let i = 2; i < statements.length - 1; i++) {
    const s = statements[i]!;
    if (s.values === undefined || !groupableText(s.text)) return undefined;
  }
  return names.join(',');
}

/**
 * Whether a statement's text may be a group's member: marked, and changing nothing beyond itself. A
 * pure function of the text, remembered per text: the platform's marked statements are a few fixed
 * texts (a step's checkpoint with its CTEs runs to a thousand characters), and scanning each of them
 * with SESSION_CHANGING for every transaction was 1.6 % of a worker's profile samples (session 23,
 * docs/performance-history.md). Bounded: past the bound, texts are tested each time, as before.
 */
function groupableText(text: string): boolean {
  let ok = groupable.get(text);
  if (ok === undefined) {
    ok = MARKED(text) && !SESSION_CHANGING.test(text);
    if (groupable.size < MAX_REMEMBERED_TEXTS) groupable.set(text, ok);
  }
  return ok;
}
const groupable = new Map<string, boolean>();
const MAX_REMEMBERED_TEXTS = 1_000;

export class GroupCommit {
  readonly options: GroupCommitOptions;
  #queue: Queued[] = [];
  #inFlight = 0;
  /** Transactions sent; grouped messages (more than one member) and their members; groups that failed and were sent again alone. */
  readonly stats = { transactions: 0, grouped: 0, groupedMembers: 0, failedGroups: 0 };

  constructor(options: Partial<GroupCommitOptions> = {}) {
    this.options = { ...DEFAULT_GROUP_COMMIT, ...options };
  }

  /** Transactions queued behind the messages on their way (not sent yet). */
  get queued(): number {
    return this.#queue.length;
  }

  /** Sends the member's transaction, grouped with others when they are waiting; resolves with its own statements' results. */
  submit(member: GroupMember): Promise<pg.QueryResult[]> {
    const key = groupKey(member.statements);
    if (key === undefined) return member.send(member.statements);
    return new Promise((resolve, reject) => {
      this.#queue.push({ ...member, key, resolve, reject, inOwnContext: AsyncLocalStorage.snapshot() });
      this.#pump();
    });
  }

  #pump(): void {
    while (this.#inFlight < this.options.maxInFlight && this.#queue.length > 0) {
      const key = this.#queue[0]!.key;
      const members: Queued[] = [];
      this.#queue = this.#queue.filter((m) => (m.key === key && members.length < this.options.maxMembers ? (members.push(m), false) : true));
      this.#inFlight++;
      void this.#send(members).finally(() => {
        this.#inFlight--;
        this.#pump();
      });
    }
  }

  async #send(queued: Queued[]): Promise<void> {
    this.stats.transactions += queued.length;
    // A member whose connection the server already ended (its transaction was still held back in the
    // client: pg_terminate_backend, idle_session_timeout, a reset socket) cannot carry the group: sent
    // on it, the group would never reach PostgreSQL, yet every member would be told its outcome is
    // unknown. It fails alone, as it would have; the others go on without it.
    const members = queued.filter((m) => m.connected?.() !== false);
    for (const m of queued) if (!members.includes(m)) void this.#alone(m);
    if (members.length === 0) return;
    if (members.length === 1) return this.#alone(members[0]!);
    this.stats.grouped++;
    this.stats.groupedMembers += members.length;
    const bodies = members.map((m) => m.statements.slice(1, -1));
    const merged: Statement[] = [members[0]!.statements[0]!, ...bodies.flat(), members[0]!.statements[members[0]!.statements.length - 1]!];
    const leader = members[0]!;
    let results: pg.QueryResult[];
    try {
      results = await outsideAnyTrace(() => leader.send(merged));
    } catch (err) {
      const done = completedBefore(err);
      if (!isSqlState((err as { code?: unknown })?.code) || (done && done.length >= merged.length)) {
        // Not a statement PostgreSQL refused (the connection lost — whose errors carry string codes
        // too, ECONNRESET or EPIPE —, a row that could not be read), or after the commit: the group
        // may have committed. Each member learns it as it would alone.
        for (const m of members) m.reject(err);
        return;
      }
      // PostgreSQL refused a statement before the commit, or the commit itself (a deferred check:
      // `written_by_its_step`, a deferred key): nothing of the group committed, and its connection is in
      // the failed transaction (or, after a refused commit, in none). Roll it back, then every member goes
      // alone and ends as it would have — which one a refused commit was for cannot be told from its error.
      // Outside the slot, so a member that waits long on its own again holds no one.
      this.stats.failedGroups++;
      const rolledBack = outsideAnyTrace(() => leader.send([{ text: 'rollback', discard: true }])).catch(() => {});
      for (const m of members) void (m === leader ? rolledBack.then(() => this.#alone(m)) : this.#alone(m));
      return;
    }
    if (results.length !== merged.length) {
      // Cannot happen with prepared statements (one result each); never hand out misaligned rows.
      const err = new Error(`group commit: ${results.length} results for ${merged.length} statements; the group committed, its results cannot be told apart`);
      for (const m of members) m.reject(err);
      return;
    }
    let at = 1;
    for (const [i, m] of members.entries()) {
      const body = results.slice(at, at + bodies[i]!.length);
      at += bodies[i]!.length;
      m.resolve([results[0]!, ...body, results[results.length - 1]!]);
    }
  }

  async #alone(m: Queued): Promise<void> {
    try {
      // In the member's own context: #pump runs in whichever caller's context freed the slot.
      m.resolve(await m.inOwnContext(() => m.send(m.statements)));
    } catch (e) {
      m.reject(e);
    }
  }
}

/**
 * Runs a group's send outside every trace. It would otherwise run in the async context of whichever
 * member's caller freed the slot (#pump), and the database span the pg instrumentation makes would
 * land in that member's trace, tagged with its tenant (correlation-span-processor.ts), holding the
 * other tenants' statements, and a failing member's error shown in another tenant's trace. With no
 * active span, the pg instrumentation (requireParentSpan) records no span for it: a group's
 * statements appear in no trace (each member's step span still times its wait). A context switch
 * only: no round trip, no allocation beyond the call (ADR 0007).
 */
const outsideAnyTrace = <R>(fn: () => R): R => context.with(ROOT_CONTEXT, fn);

/** How a pool asks for group commit in its driver options: plain data, which survive MikroORM's copy of its options. */
export interface GroupCommitRef {
  id: string;
  maxInFlight: number;
}

const registry = new Map<string, GroupCommit>();

/** The group commit of one pool (every client of the pool names the same `id`). */
export function groupCommitFor(ref: GroupCommitRef): GroupCommit {
  let g = registry.get(ref.id);
  if (!g) registry.set(ref.id, (g = new GroupCommit({ maxInFlight: ref.maxInFlight })));
  return g;
}

/** The group commits' counters summed over this process's pools (for /metrics). */
export function groupCommitTotals(): GroupCommit['stats'] {
  const total = { transactions: 0, grouped: 0, groupedMembers: 0, failedGroups: 0 };
  for (const g of registry.values()) for (const k of Object.keys(total) as (keyof typeof total)[]) total[k] += g.stats[k];
  return total;
}
