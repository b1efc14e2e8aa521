import { AsyncLocalStorage } from 'node:async_hooks';
import pg from 'pg';
import { PreparedNames, StatementBatch, completedBefore, inlineStatement, type Statement } from './statement-batch.ts';
import { groupCommitFor, type GroupCommit, type GroupCommitRef } from './group-commit.ts';
import { DEFER_UNTIL_NEXT, LAST_IN_TRANSACTION } from './markers.ts';
import { endWithin } from './connection-bounds.ts';
import { backendLiveness, type Liveness } from './backend-liveness.ts';

/**
 * A `pg` client that sends fewer round trips without changing what a transaction does.
 *
 * On this kind of machine a round trip costs ~100 µs of CPU in the client and as much in the server
 * (docs/performance.md), and MikroORM opens every tenant transaction with two statements whose results
 * nobody reads: `begin` and `select set_config('app.tenant_id', …, true)`. This client holds such
 * statements back and sends them, in order, in the same message as the next statement on the
 * connection. That message is an extended-protocol batch of prepared statements (statement-batch.ts:
 * each statement parsed once per connection, MikroORM's parameters bound by binding-driver.ts) when
 * every statement in it is a single one; otherwise a simple-protocol message with the values written
 * in. Either way PostgreSQL runs the statements in order, an explicit `begin` leaves the transaction
 * open afterwards, and a failing statement stops the rest. The next statement's result is returned: a
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
 * Held-back statements answer at once with an empty result. Queries given as objects (cursors, pg
 * query configs) are never merged: what is held is sent just before them.
 */
export { DEFER_UNTIL_NEXT, LAST_IN_TRANSACTION } from './markers.ts';


// MikroORM binds the setting's name and value (prepared-connection.ts); a caller may also write them in.
const SET_CONFIG = String.raw`set_config\((?:'[a-z0-9_.]+', '(?:[^']|'')*'|\$\d+, \$\d+), true\)`;
const SESSION_STATEMENT = new RegExp(String.raw`^(?:begin|set local role "(?:[^"]|"")+"|select ${SET_CONFIG}(?:, ${SET_CONFIG})*)$`, 'i');

const holdInserts = new AsyncLocalStorage<true>();

/**
 * A short transaction of its own that travels in front of the next transaction's first message on
 * the connection: `begin; <prelude statements>; commit; begin; <held statements>; <next statement>`,
 * one round trip for both, two separate transactions. If a prelude
 * statement fails, PostgreSQL skips the rest of the message: nothing of the next transaction runs,
 * the statement it was sent with fails, and so does every later one on the connection until the
 * caller's rollback (so a caller that caught the error can never go on outside a transaction).
 * Used for the idempotency claim (docs/adr/0004-fewer-round-trips-per-transaction.md).
 */
export class Prelude {
  /** One statement each, values bound (sent as prepared statements), or one text of several statements. */
  readonly sql: string | readonly Statement[];
  /** Statements in `sql`; the result returned is the last one's. */
  readonly statements: number;
  sent = false;
  /** Set when the message carrying the prelude came back: its last statement's result, or the error. */
  result: pg.QueryResult | undefined;
  error: unknown;
  constructor(sql: string | readonly Statement[], statements: number = typeof sql === 'string' ? 1 : sql.length) {
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
export function isDeferrable(text: string, values?: readonly unknown[]): boolean {
  if (text.startsWith(DEFER_UNTIL_NEXT)) return true;
  if (!SESSION_STATEMENT.test(text)) return false;
  // Bound settings: each set_config's name (the odd parameters) must be a plain setting name, as written-in ones are.
  return !values?.length || values.every((v, i) => i % 2 === 1 || (typeof v === 'string' && /^[a-z0-9_.]+$/.test(v)));
}

/**
 * How long this client waits for PostgreSQL's answer to a message before it drops the connection
 * (plain data in the pool's driver options: orm.ts). PostgreSQL ends each statement itself within
 * `statementMs` (statement_timeout, DATABASE_STATEMENT_TIMEOUT), but only if it hears it: a server
 * that stops answering without closing the connection (a host gone, a partition, a failover that
 * leaves the old address silent) leaves a statement waiting on the client for ever. The client
 * allows the server `statementMs + marginMs` of silence between two answers (`bounded`).
 */
export interface AnswerBound {
  /** DATABASE_STATEMENT_TIMEOUT: the server cancels any one statement after this long. */
  statementMs: number;
  /** DATABASE_ANSWER_MARGIN: what the client waits beyond the server's own bound. */
  marginMs: number;
  /**
   * DATABASE_ANSWER_PER_STATEMENT: a batch asks for each answer as it is made (a Flush after each
   * statement that may wait but the last: statement-batch.ts), so its bound is one statement's, not the
   * sum over its statements. Off by default: the Flushes cost the engine about 15 % more CPU per run in
   * session 32's compare-only runs (docs/performance-history.md), so a batch is allowed the sum, with a
   * liveness check after each statement's bound of silence that gives up a server gone silent after
   * about one (watch).
   */
  perStatement?: boolean;
}

/**
 * The error a statement fails with when the server was silent past its {@link AnswerBound} (a network
 * timeout: transient), or past one statement's bound with a liveness check that found its backend not
 * at work on it (`seen`: what the check found).
 */
export class NoAnswerError extends Error {
  readonly code = 'ETIMEDOUT';
  constructor(ms: number, seen?: string) {
    super(
      seen === undefined
        ? `PostgreSQL did not answer within ${ms} ms (DATABASE_STATEMENT_TIMEOUT plus DATABASE_ANSWER_MARGIN, since it last sent anything while a statement awaited its answer): the connection is dropped`
        : `PostgreSQL did not answer within ${ms} ms (at least DATABASE_STATEMENT_TIMEOUT plus DATABASE_ANSWER_MARGIN, since it last sent anything while a statement awaited its answer), and ${seen}: the connection is dropped`,
    );
    this.name = 'NoAnswerError';
  }
}

/**
 * Errors a connection of the platform's own pools raised for a message it sent PostgreSQL (the server's
 * error, node-postgres's "Connection terminated unexpectedly", a NoAnswerError). MikroORM converts its
 * driver's errors into a DriverException only on the entity manager's own paths (`em.execute`, `find`,
 * `flush`); a step that queries through its connection (`em.getConnection().execute`), a query builder's
 * `execute` or Kysely gets the driver's error as it is, and only this tells it from the same error of a
 * step's own database client (isBackendUnavailable).
 */
const raisedHere = new WeakSet<object>();

/** True when `e` is an error one of the platform's database connections raised (see raisedHere). */
export const raisedByPlatformDatabase = (e: unknown): boolean => typeof e === 'object' && e !== null && raisedHere.has(e);

const markRaised = (e: unknown): never => {
  if (typeof e === 'object' && e !== null) raisedHere.add(e);
  throw e;
};

/** A statement that may take a while to answer (a lock, a deferred constraint at commit): anything but `begin` and the session settings. */
const mayWait = (s: Statement): boolean => !SESSION_STATEMENT.test(s.text);

/** A statement that can be one of an extended-protocol batch: bound values make it one statement; without, no `;` in it. */
const batchable = (s: Statement): boolean => s.values !== undefined || !s.text.includes(';');

export class CoalescingClient extends pg.Client {
  #pending: Statement[] = [];
  /** The error of a prelude that failed, until the transaction it led is rolled back. */
  #poisoned: unknown;
  /** The transaction's commit went with its last statement (LAST_IN_TRANSACTION); the caller's commit is answered here. */
  #committedAhead = false;
  /** A `begin` came through this client and its transaction has not ended: where LAST_IN_TRANSACTION may add the commit. */
  #began = false;
  /** A savepoint was set in this transaction (a nested transaction): the mark no longer adds the commit, which would end the outer one. */
  #nested = false;
  readonly #prepared: PreparedNames;
  /** The pool's group commit (group-commit.ts), when enabled: whole transactions in one message may share a commit. */
  readonly #group: GroupCommit | undefined;
  /** The connection is gone (the server terminated it, restarted, the network dropped): no transaction is open on it any more. */
  #lost = false;
  /** Set when the pool bounds the wait for an answer (both parts above 0). */
  readonly #answer: AnswerBound | undefined;
  /**
   * What each message sent and not yet answered may go without a byte from the server (ms): one
   * statement's bound for a batch, which has the server deliver each answer as it is made; the sum
   * over its statements for a simple-protocol message of several, answered only at its end.
   */
  #silences: number[] = [];
  /** When the server last sent this connection anything (epoch ms), or a message went out on a quiet one. */
  #heardAt = 0;
  /** The socket whose bytes count as hearing from the server (pg replaces its socket by a TLS one after connecting). */
  #heardOn: NodeJS.EventEmitter | undefined;
  readonly #heard = () => (this.#heardAt = Date.now());
  #watchdog: NodeJS.Timeout | undefined;
  /** What the client was made with: a liveness check connects with the same (see watch). */
  readonly #config: string | pg.ClientConfig | undefined;
  /**
   * The last liveness check's outcome for the silence that began at `heardAt` (stale once anything is
   * heard): the silence is let run until `until`; `unsure`, it found the backend just done or waiting
   * on its socket.
   */
  #checked: { heardAt: number; until: number; unsure: boolean } | undefined;
  #checking = false;
  readonly #livenessChecks: Record<Liveness | 'ignored', number> = { working: 0, unsure: 0, dead: 0, unknown: 0, ignored: 0 };

  constructor(config?: string | (pg.ClientConfig & { preparedStatements?: boolean; groupCommit?: GroupCommitRef; answerBound?: AnswerBound })) {
    super(config);
    this.#prepared = new PreparedNames(typeof config !== 'object' || config.preparedStatements !== false);
    this.#group = typeof config === 'object' && config.groupCommit ? groupCommitFor(config.groupCommit) : undefined;
    const bound = typeof config === 'object' ? config.answerBound : undefined;
    this.#answer = bound && bound.statementMs > 0 && bound.marginMs > 0 ? bound : undefined;
    this.#config = config;
    // pg reports a dropped connection as `error` (then `end`); whoever holds the client handles the error itself.
    this.on('error', () => (this.#lost = true));
    this.on('end', () => (this.#lost = true));
    // pg tracks the ParseComplete of its own named queries only; a batch counts its own.
    (this as unknown as { connection: NodeJS.EventEmitter }).connection.on('parseComplete', () => {
      const active = (this as unknown as { _activeQuery?: unknown })._activeQuery;
      if (active instanceof StatementBatch) active.parseComplete();
    });
  }

  /**
   * pg's end, done within the margin when the pool bounds answers (endWithin): a pool's close — a
   * process's shutdown, `db:migrate`'s and `db:check`'s end — otherwise left each idle connection to
   * a server gone silent waiting for ever for the server to close it. Both of pg's forms are bounded:
   * pg-pool ends its clients with the callback form (its own end does not wait for them, but each
   * socket left open kept a process that ends by running out of work, `db:migrate`, from exiting).
   */
  // pg's two forms (a promise, or a callback) are kept.
  override end(callback?: any): any {
    if (!this.#answer) return super.end(callback);
    const ended = endWithin(this, () => super.end(), this.#answer.marginMs);
    if (callback === undefined) return ended;
    void ended.then(() => callback(), (e: unknown) => callback(e));
  }

  /**
   * The liveness checks this connection made, counted by what they found, or `ignored`: their reading
   * came after the silence they were made for had ended (an answer, the connection lost) (for tests).
   */
  get livenessChecks(): Readonly<Record<Liveness | 'ignored', number>> {
    return this.#livenessChecks;
  }

  /** Statements held back on this connection, with their values written in (for tests). */
  get pendingStatements(): readonly string[] {
    return this.#pending.map(inlineStatement);
  }

  // pg's overloads cannot be restated precisely here; the three call forms are handled explicitly.
  override query(config: any, values?: any, callback?: any): any {
    if (typeof config === 'string' && /^rollback$/i.test(config) && (values === undefined || (Array.isArray(values) && values.length === 0)) && callback === undefined) {
      // A rollback that cannot reach the server because the connection is gone has nothing left to do:
      // PostgreSQL ended the session and its transaction with it. Answered here, not raised: the
      // transaction's own error stands, and the caller goes on to give the client back to its pool,
      // which drops it. (Kysely releases a transaction's connection only after its rollback succeeded:
      // a rollback raised here left the client checked out for good — one connection fewer in the pool
      // for every connection the server dropped in a transaction, and `pool.end()` waiting forever.)
      const done = () => {
        this.#pending = [];
        this.#poisoned = undefined;
        this.#committedAhead = false;
        this.#began = false;
        this.#nested = false;
        return held('ROLLBACK');
      };
      if (this.#lost) return Promise.resolve(done());
      return (this.dispatch(config) as Promise<pg.QueryResult>).catch((err: unknown) => {
        if (this.#lost) return done();
        throw err;
      });
    }
    return this.dispatch(config, values, callback);
  }

  /** What query() does with a statement, but for a rollback on a connection that is gone (above). */
  private dispatch(config: any, values?: any, callback?: any): any {
    if (this.#poisoned !== undefined) {
      // The transaction the failed prelude led ends with its rollback; a `begin` starts another,
      // after the rollback of the prelude's transaction, which the failure left open and aborted.
      if (typeof config === 'string' && /^(rollback|begin)$/i.test(config)) {
        this.#poisoned = undefined;
        if (/^begin$/i.test(config)) this.#pending.push({ text: 'rollback', discard: true });
      } else return Promise.reject(this.#poisoned);
    }
    if (this.#committedAhead) {
      if (typeof config === 'string' && /^(commit|rollback)$/i.test(config)) {
        this.#committedAhead = false;
        return Promise.resolve(held(config.toUpperCase()));
      }
      // A transaction that begins is a new one (its predecessor's end was never sent here).
      if (typeof config !== 'string' || !/^begin$/i.test(config))
        // Still committed ahead: the rollback the caller sends after this error is answered here too
        // (PostgreSQL, with no transaction open, would answer it with a warning in its log).
        return Promise.reject(new Error(`a statement followed one marked LAST_IN_TRANSACTION, whose transaction has already committed: ${String(typeof config === 'string' ? config : config?.text).slice(0, 200)}`));
      this.#committedAhead = false;
    }
    const plain = typeof config === 'string' && typeof values !== 'function' && callback === undefined && (values === undefined || Array.isArray(values));
    if (!plain) {
      this.sendHeld();
      return super.query(config, values, callback);
    }
    const statement: Statement = Array.isArray(values) && values.length > 0 ? { text: config as string, values } : { text: config as string };
    if (/^(begin|commit|rollback)$/i.test(statement.text)) {
      this.#began = /^begin$/i.test(statement.text);
      this.#nested = false;
    } else if (/^savepoint\s/i.test(statement.text)) this.#nested = true;
    const prelude = preludes.getStore();
    // Not with a rollback: a transaction that ends before it sent anything had no use for the claim.
    if (prelude && !prelude.sent && !isDeferrable(statement.text, statement.values) && !/^rollback$/i.test(statement.text) && /^begin$/i.test(this.#pending[0]?.text ?? '')) return this.sendWithPrelude(prelude, statement);
    if (statement.text.startsWith(DEFER_UNTIL_NEXT) && !this.#began) {
      // A held write belongs to the transaction it was issued in. Outside one this client began —
      // after its rollback was sent, by a step still running when its transaction was aborted — it
      // would stay on the connection and go out with whatever the pool's next user sends: refused.
      return Promise.reject(new Error(`a statement marked to travel with its transaction's next one came after the transaction ended; not sent: ${statement.text.slice(DEFER_UNTIL_NEXT.length, DEFER_UNTIL_NEXT.length + 200)}`));
    }
    if (isDeferrable(statement.text, statement.values)) {
      this.#pending.push({ ...statement, discard: true });
      return Promise.resolve(held(statement.text.startsWith(DEFER_UNTIL_NEXT) ? 'DEFERRED' : (statement.text.split(' ', 1)[0] ?? '').toUpperCase()));
    }
    // A transaction that ends before it sent anything (its `begin` is still held) has nothing to undo
    // on the server: what is held is dropped and the rollback answered here (a step that fails before
    // its first statement costs no round trip).
    if (/^rollback$/i.test(statement.text) && /^begin$/i.test(this.#pending[0]?.text ?? '')) {
      this.#pending = [];
      return Promise.resolve(held('ROLLBACK'));
    }
    // A rollback undoes what is held, and must not go after it: a held insert that fails would make
    // PostgreSQL skip the rollback, leaving the connection in an aborted transaction that its pool
    // never gets back. Only `begin` and the settings, which cannot fail, still go first.
    if (/^rollback\b/i.test(statement.text)) this.#pending = this.#pending.filter((s) => !s.text.startsWith(DEFER_UNTIL_NEXT));
    // Only in a transaction this client began, so the commit is the transaction's own (never one
    // PostgreSQL would answer with "there is no transaction in progress"), and with no savepoint set
    // in it (inside a nested transaction the commit would end the outer one). Elsewhere the mark
    // changes nothing: slower, never wrong.
    if (statement.text.startsWith(LAST_IN_TRANSACTION) && this.#began && !this.#nested) return this.sendWithCommit(statement);
    const statements = [...this.#pending, statement];
    this.#pending = [];
    // A commit with everything its transaction did still held: the whole transaction is this one
    // message, which may share its commit with others (group-commit.ts).
    if (this.#group && /^commit$/i.test(statement.text) && /^begin$/i.test(statements[0]!.text)) {
      return this.#group.submit({ statements, send: (s) => this.send(s) as Promise<pg.QueryResult[]>, connected: () => !this.#lost }).then(lastResult);
    }
    return this.send(statements).then(lastResult);
  }

  /**
   * One message for `statements`: an extended-protocol batch of prepared statements when each is one
   * statement (statement-batch.ts), else a simple-protocol message with the values written in.
   */
  private send(statements: Statement[]): Promise<pg.QueryResult | pg.QueryResult[]> {
    return this.sendMessage(statements).catch(markRaised);
  }

  private sendMessage(statements: Statement[]): Promise<pg.QueryResult | pg.QueryResult[]> {
    if (statements.length === 1 && statements[0]!.values === undefined) return this.bounded(super.query(statements[0]!.text) as unknown as Promise<pg.QueryResult>, 1);
    if (statements.every(batchable)) {
      // With the answer bound per statement, the server sends each answer as it is made (a Flush after
      // each statement that may wait: statement-batch.ts), so the silence to allow is one statement's;
      // else PostgreSQL keeps the batch's answers until its end, and the batch is allowed the sum (bounded).
      const perStatement = this.#answer?.perStatement === true;
      const batch = new StatementBatch(statements, (this as unknown as { _types: unknown })._types, this.#prepared, perStatement ? mayWait : undefined);
      const done = new Promise<pg.QueryResult[]>((resolve, reject) => {
        batch.callback = (err, results) => (err ? reject(err) : resolve(results!));
      });
      super.query(batch as never);
      return this.bounded(done, perStatement ? 1 : statements.filter(mayWait).length);
    }
    return this.bounded(super.query(statements.map(inlineStatement).join(';\n')) as unknown as Promise<pg.QueryResult | pg.QueryResult[]>, statements.filter(mayWait).length);
  }

  /**
   * `sent` (the answer to a message), failed with {@link NoAnswerError} once PostgreSQL has sent
   * this connection nothing for longer than it may while the message is unanswered: statement_timeout
   * for each of `silentStatements` (the statements that may wait between two answers it sends) plus
   * the margin. PostgreSQL runs a
   * message's statements one after the other and ends each within its statement_timeout (per
   * statement, in both protocols, since PostgreSQL 13), so a server that is there answers a statement
   * that may wait (not `begin` nor a session setting: a lock, a deferred constraint at commit) within
   * statement_timeout of the answer before it — if it sends each answer when it is made, which a batch
   * asks for with `perStatement` (a Flush after each such statement but the last: statement-batch.ts;
   * PostgreSQL otherwise keeps a message's answers until its end). So the bound is the silence allowed
   * between two answers — the server's statement_timeout plus the margin — counted from the last bytes
   * heard: with `perStatement`, not a sum over the message (a group commit of a dozen steps sends forty
   * statements, and a server gone silent under it is waited for forty bounds, minutes, without it),
   * while one that answers each statement in turn is never cut however long the whole takes. Without
   * it (the default: the Flushes cost the engine ~15 % more CPU per run, docs/performance-history.md session
   * 32), and for a simple-protocol message of several statements (values written in, no Flush
   * possible), a message is answered only whole: it is allowed the sum, but once silent for one
   * statement's bound it is kept only while a liveness check finds its backend at work (watch): nothing
   * in the path of a message answered within one statement's bound, which clears the timer.
   *
   * Past the bound the socket is destroyed: pg fails every query on the client with the error, the
   * transaction's rollback is answered here (the connection is gone), and the pool drops the client,
   * which is no longer queryable. A message that did reach the server meanwhile may still run there,
   * as with any connection lost after a statement was sent: its outcome is unknown to the caller,
   * whose step retry finds its checkpoint if it committed (ADR 0004).
   */
  private bounded<T>(sent: Promise<T>, silentStatements: number): Promise<T> {
    const bound = this.#answer;
    if (!bound) return sent;
    const ms = Math.max(1, silentStatements) * bound.statementMs + bound.marginMs;
    const stream = (this as unknown as { connection: { stream: NodeJS.EventEmitter } }).connection.stream;
    if (this.#heardOn !== stream) {
      this.#heardOn?.off('data', this.#heard);
      stream.on('data', this.#heard);
      this.#heardOn = stream;
    }
    // Behind an unanswered message the silence counts from what was last heard (pg sends a message
    // once the one before it is answered, which is hearing from the server); on a quiet connection, from
    // now. (Counted from the previous message's deadline instead, every message sent within a bound of
    // the one before — a busy connection's — pushed it further: after 30 quick answers the next waited
    // 30 bounds, not one.)
    if (this.#silences.length === 0) this.#heardAt = Date.now();
    this.#silences.push(ms);
    // A message allowed more than one statement's bound is looked at after one (watch).
    this.#watchdog ??= setTimeout(() => this.watch(), Math.min(ms, bound.statementMs + bound.marginMs)).unref();
    return sent.finally(() => {
      this.#silences.splice(this.#silences.indexOf(ms), 1);
      if (this.#silences.length === 0) {
        clearTimeout(this.#watchdog);
        this.#watchdog = undefined;
      }
    });
  }

  /**
   * The watchdog's round: drops the connection if it has been silent too long, else looks again when it
   * would be. Runs only when a message has gone unanswered for a statement's bound (never while the
   * server answers in time: bounded clears the timer at each answer).
   *
   * A message allowed the sum over its statements (several that may wait, answered only at its end) is
   * not left to that sum: once it has been silent for one statement's bound, the server is asked, on a
   * connection of its own, whether this connection's backend is still at work on it (backend-liveness.ts;
   * at most one check in flight per connection, and one connection per process and server for all of
   * them). Working (a lock, a long statement), or the check cannot tell (a pooler's pids, the server
   * refusing the check): the silence is let run another statement's bound, then asked again; just done
   * or waiting on its socket: asked again after the margin, and dropped if so again; gone, idle, or the
   * server giving the check no answer within one statement's bound: dropped now. A server that is there
   * thus never has a message cut that the sum allowed, and one gone silent is given up after about one
   * statement's bound and the check's, not the sum; the sum stays the upper bound either way.
   */
  private watch(): void {
    clearTimeout(this.#watchdog);
    this.#watchdog = undefined;
    const bound = this.#answer;
    if (this.#silences.length === 0 || this.#lost || !bound) return;
    const ms = Math.max(...this.#silences);
    const now = Date.now();
    let next = this.#heardAt + ms;
    if (next <= now) return this.dropSilent(ms);
    const one = bound.statementMs + bound.marginMs;
    const pid = (this as unknown as { processID: number | null }).processID;
    if (ms > one && typeof pid === 'number') {
      const checked = this.#checked?.heardAt === this.#heardAt ? this.#checked : undefined;
      const quietUntil = Math.max(this.#heardAt + one, checked?.until ?? 0);
      if (quietUntil > now) next = Math.min(next, quietUntil);
      else if (!this.#checking) this.checkLiveness(pid, one, bound.marginMs, checked?.unsure === true);
    }
    this.#watchdog = setTimeout(() => this.watch(), next - now).unref();
  }

  /** Asks whether backend `pid` is at work on the unanswered message (see watch); its answer decides, unless the server was heard meanwhile. */
  private checkLiveness(pid: number, one: number, marginMs: number, unsureBefore: boolean): void {
    const heardAt = this.#heardAt;
    this.#checking = true;
    const { host, port, database, user } = (this as unknown as { connectionParameters: { host: string; port: number; database: string; user: string } }).connectionParameters;
    const own = typeof this.#config === 'string' ? { connectionString: this.#config } : this.#config;
    const config: pg.ClientConfig = { ...own, application_name: 'dealix liveness check' };
    void backendLiveness(JSON.stringify([host, port, database, user]), config, pid, one, marginMs).then(({ liveness, seen }) => {
      this.#checking = false;
      if (this.#lost || this.#silences.length === 0 || this.#heardAt !== heardAt) {
        this.#livenessChecks.ignored++;
        return this.watch();
      }
      this.#livenessChecks[liveness]++;
      if (liveness === 'dead' || (liveness === 'unsure' && unsureBefore)) return this.dropSilent(Date.now() - heardAt, seen);
      this.#checked = { heardAt, until: Date.now() + (liveness === 'unsure' ? marginMs : one), unsure: liveness === 'unsure' };
      this.watch();
    });
  }

  /** Destroys the connection of a message PostgreSQL did not answer in time (see bounded). */
  private dropSilent(ms: number, seen?: string): void {
    this.#lost = true;
    (this as unknown as { connection: { stream: { destroy(err?: Error): void } } }).connection.stream.destroy(new NoAnswerError(ms, seen));
  }

  /** The transaction's last statement with what is held before it and the commit after it: its own result is returned. */
  private sendWithCommit(statement: Statement): Promise<pg.QueryResult> {
    const statements = [...this.#pending, statement, { text: 'commit', discard: true }];
    this.#pending = [];
    this.#began = false;
    const send = (s: Statement[]) => this.send(s) as Promise<pg.QueryResult[]>;
    // A whole transaction in this one message (its `begin` was still held) may share its commit with others.
    const sent = this.#group && /^begin$/i.test(statements[0]!.text) ? this.#group.submit({ statements, send, connected: () => !this.#lost }) : send(statements);
    return sent.then((results) => {
      this.#committedAhead = true;
      return results[results.length - 2]!;
    });
  }

  private sendWithPrelude(prelude: Prelude, statement: Statement): Promise<pg.QueryResult> {
    prelude.sent = true;
    // The prelude's own `begin`: a `commit` that ends the implicit transaction a message runs in
    // commits it too, but PostgreSQL answers it with a warning ("there is no transaction in
    // progress"), logged by the server for every keyed request.
    const lead: readonly Statement[] = [{ text: 'begin', discard: true }, ...(typeof prelude.sql === 'string' ? [{ text: prelude.sql }] : prelude.sql)];
    const statements = [...lead, { text: 'commit', discard: true }, ...this.#pending, statement];
    this.#pending = [];
    return (this.send(statements) as Promise<pg.QueryResult[]>).then(
      (results) => {
        prelude.result = results[prelude.statements];
        return results[results.length - 1]!;
      },
      (err: unknown) => {
        // A batch says how far it got: past the prelude's commit, the claim is committed and its result
        // known; the failure is then the next transaction's own, and once its `begin` ran, that
        // transaction ends with the caller's rollback like any other.
        const done = completedBefore(err);
        if (done && done.length > lead.length) prelude.result = done[lead.length - 1];
        else prelude.error = err;
        if (!done || done.length <= lead.length + 1) this.#poisoned = err;
        throw err;
      },
    );
  }

  /**
   * Sends what is held as its own message ahead of a query that cannot carry it. Inside a transaction
   * a failure of it aborts the transaction, so that query fails too (as "current transaction is
   * aborted"); MikroORM never takes this path, since it uses no cursors or query objects here.
   */
  private sendHeld(): void {
    if (this.#pending.length === 0) return;
    const statements = this.#pending;
    this.#pending = [];
    this.send(statements).catch(() => {});
  }
}
