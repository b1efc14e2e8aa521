import pg from 'pg';

/**
 * Several statements in ONE extended-protocol message to PostgreSQL, each as a named prepared
 * statement: `Parse` (only the first time the connection sees the statement), `Bind`, `Describe`,
 * `Execute` per statement, then one `Sync`. PostgreSQL runs them in order and answers once; if one
 * fails it skips the rest until the `Sync`, exactly as it does with a simple-protocol message of
 * several statements (coalescing-client.ts relies on that), but it parses and plans each statement
 * once per connection instead of once per execution (measured in docs/performance.md; ADR 0004).
 *
 * node-postgres (pg 8) sends one statement per message; this is a pg "submittable" (the interface
 * pg-cursor uses) that writes the messages itself and collects each statement's result with pg's own
 * `Result` and the client's type parsers.
 */

const { Result, utils, escapeLiteral } = pg as unknown as {
  Result: new (rowMode: undefined, types: unknown) => PgResult;
  utils: { prepareValue(value: unknown): unknown };
  escapeLiteral(value: string): string;
};

interface PgResult extends pg.QueryResult {
  addFields(fields: unknown[]): void;
  parseRow(fields: unknown[]): Record<string, unknown>;
  addRow(row: Record<string, unknown>): void;
  addCommandComplete(msg: unknown): void;
}

/** One statement: its text (one statement, `$n` placeholders) and the values bound to them. */
export interface Statement {
  text: string;
  values?: readonly unknown[];
  /** Nobody reads its result (a held statement): no `Describe`, and any rows it returns are dropped. */
  discard?: boolean;
}

/** Statements without values that are worth keeping prepared: fixed texts every transaction sends. */
const FIXED_TEXTS = new Set(['begin', 'commit']);

/** The parts of pg's `Connection` a submittable writes to. */
interface Wire {
  stream: { cork?(): void; uncork?(): void };
  parse(msg: { text: string; name: string; types: number[] }): void;
  bind(msg: { portal: string; statement: string; values: unknown[] }): void;
  describe(msg: { type: 'P' | 'S'; name: string }): void;
  execute(msg: { portal: string; rows: number }): void;
  flush(): void;
  close(msg: { type: 'P' | 'S'; name: string }): void;
  sync(): void;
  sendCopyFail(message: string): void;
}

/**
 * Statement names, process-wide: the same text gets the same name on every connection. Bounded, so a
 * process that builds statement texts from data (e.g. IN lists of varying length) cannot make every
 * backend hold an ever-growing set of prepared statements: past the bound, texts run unnamed (parsed
 * each time, as before).
 */
const MAX_NAMED = 500;
const names = new Map<string, string>();
function nameFor(text: string): string {
  let name = names.get(text);
  if (name === undefined && names.size < MAX_NAMED) names.set(text, (name = `dealix_${names.size}`));
  return name ?? '';
}

/**
 * When a connection prepares a statement again (executions of it on that connection): after 100, 1,000
 * and 10,000, then every 100,000. PostgreSQL keeps a prepared statement's generic plan until the
 * statement is closed, DDL touches its tables or ANALYZE updates their statistics. A plan made while a
 * table was new and had no statistics can be wrong for the table grown (every index leading with
 * tenant_id costs the same then, and one that walks the tenant's rows may win), and where ANALYZE
 * never runs (autovacuum off) nothing else would ever replace it. Preparing again costs one parse and
 * a few custom plans per statement and connection, early and then rarely (docs/performance.md).
 */
export const REPREPARE_AFTER = { first: 100, factor: 10, every: 100_000 };

/** What a connection has prepared: names PostgreSQL holds, and names it may hold with an outdated plan. */
export class PreparedNames {
  /** False: every statement goes unnamed (a pooler in front of PostgreSQL cannot keep named ones). */
  readonly enabled: boolean;
  constructor(enabled = true) {
    this.enabled = enabled;
  }
  readonly parsed = new Set<string>();
  /** Statements to close before preparing again (after "cached plan must not change result type", or when due). */
  readonly stale = new Set<string>();
  /** Executions of each prepared name on this connection, and the count at which it is prepared again. */
  private readonly uses = new Map<string, { n: number; due: number }>();
  invalidateAll(): void {
    for (const n of this.parsed) this.stale.add(n);
    this.parsed.clear();
  }
  /** Counts one execution of a prepared `name`; when it is due, the name is closed and prepared again with it. */
  use(name: string): void {
    let u = this.uses.get(name);
    if (!u) this.uses.set(name, (u = { n: 0, due: REPREPARE_AFTER.first }));
    if (++u.n < u.due) return;
    u.due = u.n + Math.min(u.n * (REPREPARE_AFTER.factor - 1), REPREPARE_AFTER.every);
    if (this.parsed.delete(name)) this.stale.add(name);
  }
}

/** A value as a SQL literal, as node-postgres would send it as a parameter. */
function literal(value: unknown): string {
  if (value === null || value === undefined) return 'null';
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean') return String(value);
  const prepared = utils.prepareValue(value);
  return prepared === null ? 'null' : escapeLiteral(String(prepared));
}

/** A statement with its values written in as literals: for a simple-protocol message, and for diagnostics. */
export function inlineStatement(s: Statement): string {
  if (!s.values?.length) return s.text;
  const values = s.values;
  return s.text.replace(/\$(\d+)/g, (m, i: string) => (Number(i) <= values.length ? literal(values[Number(i) - 1]) : m));
}

const COMPLETED = Symbol('dealix.batch.completed');

/** The results of the statements of a batch that completed before `err` stopped it (undefined: not a batch's error). */
export function completedBefore(err: unknown): readonly pg.QueryResult[] | undefined {
  return err !== null && typeof err === 'object' ? (err as { [COMPLETED]?: pg.QueryResult[] })[COMPLETED] : undefined;
}

export class StatementBatch {
  callback: ((err: unknown, results?: pg.QueryResult[]) => void) | undefined;
  private readonly statements: readonly Statement[];
  private readonly types: unknown;
  private readonly prepared: PreparedNames;
  private readonly results: pg.QueryResult[] = [];
  private current: PgResult | undefined;
  private rowError: unknown;
  /** Names whose Parse this batch sent, in order; each ParseComplete confirms the next one. */
  private readonly parsing: string[] = [];
  private confirmed = 0;
  private settled = false;
  /** `text`, once read. */
  #text: string | undefined;
  /** Indexes of the statements whose answers the server is asked to send at once (a Flush after their Execute). */
  private readonly flushAfter: ReadonlySet<number>;

  /**
   * `mayWait`: which statements may take a while (coalescing-client.ts). PostgreSQL keeps a message's
   * answers in its output buffer until the message's Sync; after each such statement but the last it
   * is sent a Flush, so its answer leaves as soon as it is made, and a client that waits for the
   * message hears from the server after every statement that may wait — its progress, not only its
   * end. Between two of them there is at most one statement that may wait. One more send by the
   * server per such statement but the last; none for a message with one (a transaction's read with
   * its `begin` and settings). Not measurable in the client's CPU per transaction (session 32, a
   * message of three statements that may wait, on a loaded 2-CPU machine: within its noise).
   */
  constructor(statements: readonly Statement[], types: unknown, prepared: PreparedNames, mayWait?: (s: Statement) => boolean) {
    this.statements = statements;
    this.types = types;
    this.prepared = prepared;
    const waits = mayWait ? statements.flatMap((s, i) => (mayWait(s) ? [i] : [])) : [];
    this.flushAfter = new Set(waits.slice(0, -1));
  }

  /**
   * The statements as one text with their values written in (what a hook on `query` records), built
   * once: with tracing on, OpenTelemetry's pg instrumentation reads it twice per message (its check
   * that the query config has a text, then its copy of the config for the span and the request hook
   * in register.ts), and writing a step's values in — its JSON output among them — at each read was
   * about 9 % of a traced worker's profile (docs/performance-history.md, session 24).
   */
  get text(): string {
    return (this.#text ??= this.statements.map(inlineStatement).join(';\n'));
  }

  submit(connection: Wire): Error | null {
    let values: unknown[][];
    try {
      values = this.statements.map((s) => (s.values ?? []).map((v) => utils.prepareValue(v)));
    } catch (e) {
      return e as Error; // nothing written: the connection stays usable
    }
    const parsingNow = new Set<string>();
    connection.stream.cork?.();
    try {
      this.statements.forEach((s, i) => {
        // Statements with bound values and the fixed texts are kept prepared: a text with its values
        // written in is rarely seen twice.
        const name = !this.prepared.enabled || (s.values === undefined && !FIXED_TEXTS.has(s.text)) ? '' : nameFor(s.text);
        if (name !== '' && !parsingNow.has(name)) this.prepared.use(name);
        if (name === '' || (!this.prepared.parsed.has(name) && !parsingNow.has(name))) {
          if (name !== '' && this.prepared.stale.has(name)) connection.close({ type: 'S', name });
          connection.parse({ text: s.text, name, types: [] });
          if (name !== '') parsingNow.add(name);
          this.parsing.push(name);
        }
        connection.bind({ portal: '', statement: name, values: values[i]! });
        if (!s.discard) connection.describe({ type: 'P', name: '' });
        connection.execute({ portal: '', rows: 0 });
        if (this.flushAfter.has(i)) connection.flush();
      });
      connection.sync();
    } finally {
      connection.stream.uncork?.();
    }
    return null;
  }

  /** A ParseComplete arrived (coalescing-client.ts forwards it): the next Parse this batch sent succeeded. */
  parseComplete(): void {
    const name = this.parsing[this.confirmed++];
    if (name) {
      this.prepared.parsed.add(name);
      this.prepared.stale.delete(name);
    }
  }

  handleRowDescription(msg: { fields: unknown[] }): void {
    this.current = new Result(undefined, this.types);
    this.current.addFields(msg.fields);
  }

  handleDataRow(msg: { fields: unknown[] }): void {
    if (this.rowError !== undefined || !this.current) return;
    try {
      this.current.addRow(this.current.parseRow(msg.fields));
    } catch (e) {
      this.rowError = e;
    }
  }

  handleCommandComplete(msg: unknown): void {
    const result = this.current ?? new Result(undefined, this.types);
    result.addCommandComplete(msg);
    this.results.push(result);
    this.current = undefined;
  }

  handleEmptyQuery(): void {
    this.results.push(new Result(undefined, this.types));
    this.current = undefined;
  }

  handleError(err: unknown): void {
    // "cached plan must not change result type" (0A000: a table changed under a prepared statement, a
    // migration while running) or "prepared statement does not exist" (26000: someone deallocated it):
    // every statement this connection prepared is closed and prepared again at its next use.
    const code = (err as { code?: string }).code;
    if (code === '0A000' || code === '26000') this.prepared.invalidateAll();
    // What completed before the error (a prelude's caller needs to know whether its commit ran).
    if (err !== null && typeof err === 'object') Object.defineProperty(err, COMPLETED, { value: this.results, configurable: true });
    this.settle(err);
  }

  handleReadyForQuery(): void {
    this.settle(this.rowError, this.results);
  }

  handlePortalSuspended(): void {}

  handleCopyInResponse(connection: Wire): void {
    connection.sendCopyFail('No source stream defined');
  }

  handleCopyData(): void {}

  private settle(err: unknown, results?: pg.QueryResult[]): void {
    if (this.settled) return;
    this.settled = true;
    this.callback?.(err ?? null, err === undefined || err === null ? results : undefined);
  }
}
