import { AsyncLocalStorage } from 'node:async_hooks';
import pg from 'pg';

/**
 * A `pg` client that sends fewer round trips without changing what a transaction does.
 *
 * On this kind of machine a round trip costs ~100 µs of CPU in the client and as much in the server
 * (docs/performance.md), and MikroORM opens every tenant transaction with two statements whose results
 * nobody reads: `begin` and `select set_config('app.tenant_id', …, true)`. This client holds such
 * statements back and sends them, in order, in the same simple-protocol message as the next statement
 * on the connection (PostgreSQL runs a multi-statement message statement by statement; an explicit
 * `begin` in it leaves the transaction open afterwards). The next statement's result is returned: a
 * message of several statements, merged here or written so by the caller, answers with its last
 * statement's result.
 *
 * What may be held back is fixed here, never guessed:
 * - `begin`, the tenant/role session settings MikroORM issues (`select set_config(…, true)`,
 *   `set local role "…"`): their results are never read and they cannot fail on their own;
 * - a write that the caller marks with {@link DEFER_UNTIL_NEXT} because its result is not needed and
 *   it is sent with whatever the transaction sends next: the step's checkpoint (sent with the commit),
 *   and the plain inserts a step makes while it runs and flushes ({@link holdingInserts}). At the
 *   latest they travel with the `commit`; if one fails, PostgreSQL skips the rest of the message, the
 *   statement it was sent with (a later read, or the commit) raises the error, and the caller's
 *   transaction rolls back as it would have.
 *
 * Held-back statements answer at once with an empty result. Queries with bind parameters or given as
 * objects (cursors, prepared statements) are never merged: what is held is sent just before them.
 * MikroORM inlines parameters itself, so its statements all take the merging path.
 */
export const DEFER_UNTIL_NEXT = '/* dealix:defer-until-next */ ';

const SET_CONFIG = String.raw`set_config\('[a-z0-9_.]+', '(?:[^']|'')*', true\)`;
const SESSION_STATEMENT = new RegExp(String.raw`^(?:begin|set local role "(?:[^"]|"")+"|select ${SET_CONFIG}(?:, ${SET_CONFIG})*)$`, 'i');

const holdInserts = new AsyncLocalStorage<true>();

/**
 * A short transaction of its own that travels in front of the next transaction's first message on
 * the connection: `<prelude statements>; commit; begin; <held statements>; <next statement>`, one
 * round trip for both. PostgreSQL runs the prelude as an implicit transaction and commits it at the
 * `commit` before the next transaction begins, so the two stay separate transactions. If a prelude
 * statement fails, PostgreSQL skips the rest of the message: nothing of the next transaction runs,
 * the statement it was sent with fails, and so does every later one on the connection until the
 * caller's rollback (so a caller that caught the error can never go on outside a transaction).
 * Used for the idempotency claim (docs/adr/0004-fewer-round-trips-per-transaction.md).
 */
export class Prelude {
  readonly sql: string;
  /** Statements in `sql`; the result returned is the last one's. */
  readonly statements: number;
  sent = false;
  /** Set when the message carrying the prelude came back: its last statement's result, or the error. */
  result: pg.QueryResult | undefined;
  error: unknown;
  constructor(sql: string, statements: number) {
    this.sql = sql;
    this.statements = statements;
  }
  get failed(): boolean {
    return this.error !== undefined;
  }
}

const preludes = new AsyncLocalStorage<Prelude>();

/** Runs `fn` (a transaction) so that `prelude` travels with the first message of the first transaction it begins. */
export function withPrelude<T>(prelude: Prelude, fn: () => Promise<T>): Promise<T> {
  return preludes.run(prelude, fn);
}

/**
 * Runs `fn` (a step, then its unit-of-work flush) so that its plain inserts (no RETURNING: nothing
 * is read back) are held until the transaction's next statement. Used by the step executor.
 */
export function holdingInserts<T>(fn: () => Promise<T>): Promise<T> {
  return holdInserts.run(true, fn);
}

/** MikroORM's `onQuery` hook: marks a plain insert issued inside {@link holdingInserts}. */
export function markHeldInsert(sql: string): string {
  if (holdInserts.getStore() && /^insert into "[a-z_]+" \(/.test(sql) && !/\breturning\b/i.test(sql)) return DEFER_UNTIL_NEXT + sql;
  return sql;
}

/** A message of several statements answers with each one's result; its caller wants the last. */
const lastResult = (r: pg.QueryResult | pg.QueryResult[]): pg.QueryResult => (Array.isArray(r) ? r[r.length - 1]! : r);

const held = (command: string): pg.QueryResult => ({ command, rowCount: 0, oid: 0, rows: [], fields: [] });

/** True for the statements this client may hold back until the next one. */
export function isDeferrable(text: string): boolean {
  return text.startsWith(DEFER_UNTIL_NEXT) || SESSION_STATEMENT.test(text);
}

export class CoalescingClient extends pg.Client {
  #pending: string[] = [];
  /** The error of a prelude that failed, until the transaction it led is rolled back. */
  #poisoned: unknown;

  /** Statements held back on this connection (for tests). */
  get pendingStatements(): readonly string[] {
    return this.#pending;
  }

  // pg's overloads cannot be restated precisely here; the three call forms are handled explicitly.
  override query(config: any, values?: any, callback?: any): any {
    if (this.#poisoned !== undefined) {
      // The transaction the failed prelude led ends with its rollback; a `begin` starts another.
      if (typeof config === 'string' && /^(rollback|begin)$/i.test(config)) this.#poisoned = undefined;
      else return Promise.reject(this.#poisoned);
    }
    const simple = typeof config === 'string' && typeof values !== 'function' && callback === undefined && (values === undefined || (Array.isArray(values) && values.length === 0));
    if (!simple) {
      this.sendHeld();
      return super.query(config, values, callback);
    }
    const text = config as string;
    const prelude = preludes.getStore();
    // Not with a rollback: a transaction that ends before it sent anything had no use for the claim.
    if (prelude && !prelude.sent && !isDeferrable(text) && !/^rollback$/i.test(text) && /^begin$/i.test(this.#pending[0] ?? '')) return this.sendWithPrelude(prelude, text);
    if (isDeferrable(text)) {
      this.#pending.push(text);
      return Promise.resolve(held(text.startsWith(DEFER_UNTIL_NEXT) ? 'DEFERRED' : (text.split(' ', 1)[0] ?? '').toUpperCase()));
    }
    const merged = this.#pending.length === 0 ? text : `${this.#pending.join(';\n')};\n${text}`;
    this.#pending = [];
    return (super.query(merged) as Promise<pg.QueryResult | pg.QueryResult[]>).then(lastResult);
  }

  private sendWithPrelude(prelude: Prelude, text: string): Promise<pg.QueryResult> {
    prelude.sent = true;
    const merged = `${prelude.sql};\ncommit;\n${this.#pending.join(';\n')};\n${text}`;
    this.#pending = [];
    return (super.query(merged) as unknown as Promise<pg.QueryResult[]>).then(
      (results) => {
        prelude.result = results[prelude.statements - 1];
        return results[results.length - 1]!;
      },
      (err: unknown) => {
        prelude.error = err;
        this.#poisoned = err;
        throw err;
      },
    );
  }

  /**
   * Sends what is held as its own message ahead of a query that cannot carry it. Inside a transaction
   * a failure of it aborts the transaction, so that query fails too (as "current transaction is
   * aborted"); MikroORM never takes this path, since it inlines parameters and uses no cursors here.
   */
  private sendHeld(): void {
    if (this.#pending.length === 0) return;
    const text = this.#pending.join(';\n');
    this.#pending = [];
    (super.query(text) as Promise<unknown>).catch(() => {});
  }
}
