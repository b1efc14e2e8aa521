import type pg from 'pg';
import type { Statement } from './statement-batch.ts';

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
 * without the grouping (the failing one fails, the others commit). Nothing waits to be grouped: a
 * transaction goes at once while fewer than `maxInFlight` messages are on their way, and only those
 * that arrive meanwhile are grouped (as PostgreSQL groups WAL flushes of concurrent commits).
 *
 * Only members that set the same session settings right after `begin` (`select set_config(…, true)`,
 * the same text, so each overrides every setting its predecessor made) and change no other setting
 * are grouped; anything else is sent alone.
 */
export interface GroupMember {
  /** The transaction's whole message: `begin`, the settings, its statements, `commit`. */
  statements: Statement[];
  /** Sends statements as one message on the member's own connection (what it would have done alone). */
  send(statements: Statement[]): Promise<pg.QueryResult[]>;
}

interface Queued extends GroupMember {
  key: string;
  resolve(results: pg.QueryResult[]): void;
  reject(err: unknown): void;
}

const SETTINGS = /^select set_config\(/i;
/** Statements that would change what follows them in a shared transaction. */
const SESSION_CHANGING = /^\s*(?:\/\*.*?\*\/\s*)*(?:set\b|reset\b|savepoint\b|release\b|rollback\b|commit\b|begin\b|start\b|end\b|prepare\b|select\s+set_config\b|do\b|lock\b|discard\b|listen\b|notify\b|unlisten\b)/i;

export interface GroupCommitOptions {
  /** Messages on their way at once; a transaction arriving while this many are out waits to be grouped. */
  maxInFlight: number;
  /** Members of one grouped transaction at most. */
  maxMembers: number;
}

export const DEFAULT_GROUP_COMMIT: GroupCommitOptions = { maxInFlight: 2, maxMembers: 16 };

/** The grouping key of a whole-transaction message, or undefined when it must go alone. */
export function groupKey(statements: readonly Statement[]): string | undefined {
  const [first, settings] = statements;
  const last = statements[statements.length - 1];
  if (statements.length < 4 || !/^begin$/i.test(first!.text) || !/^commit$/i.test(last!.text)) return undefined;
  if (!SETTINGS.test(settings!.text) || settings!.text.includes(';')) return undefined;
  for (const s of statements.slice(2, -1)) if (SESSION_CHANGING.test(s.text)) return undefined;
  return settings!.text;
}

export class GroupCommit {
  readonly options: GroupCommitOptions;
  #queue: Queued[] = [];
  #inFlight = 0;
  /** Transactions sent, and the grouped messages that carried more than one (for tests and the benchmark). */
  readonly stats = { transactions: 0, grouped: 0, groupedMembers: 0, regrouped: 0 };

  constructor(options: Partial<GroupCommitOptions> = {}) {
    this.options = { ...DEFAULT_GROUP_COMMIT, ...options };
  }

  /** Sends the member's transaction, grouped with others when they are waiting; resolves with its own statements' results. */
  submit(member: GroupMember): Promise<pg.QueryResult[]> {
    const key = groupKey(member.statements);
    if (key === undefined) return member.send(member.statements);
    return new Promise((resolve, reject) => {
      this.#queue.push({ ...member, key, resolve, reject });
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

  async #send(members: Queued[]): Promise<void> {
    this.stats.transactions += members.length;
    if (members.length === 1) return this.#alone(members[0]!);
    this.stats.grouped++;
    this.stats.groupedMembers += members.length;
    const bodies = members.map((m) => m.statements.slice(1, -1));
    const merged: Statement[] = [members[0]!.statements[0]!, ...bodies.flat(), members[0]!.statements[members[0]!.statements.length - 1]!];
    const leader = members[0]!;
    let results: pg.QueryResult[];
    try {
      results = await leader.send(merged);
    } catch {
      // Nothing of the grouped transaction committed. Its connection is left in the failed
      // transaction: roll it back, then every member goes alone and ends as it would have.
      this.stats.regrouped++;
      await leader.send([{ text: 'rollback', discard: true }]).catch(() => {});
      await Promise.all(members.map((m) => this.#alone(m)));
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
      m.resolve(await m.send(m.statements));
    } catch (e) {
      m.reject(e);
    }
  }
}

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
