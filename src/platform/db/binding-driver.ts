import { CompiledQuery } from 'kysely';
import { Utils, isRaw, type AnyEntity, type Configuration, type EntityData } from '@mikro-orm/core';
import { NativeQueryBuilder, type QueryResult } from '@mikro-orm/sql';
import { PostgreSqlConnection, PostgreSqlDriver } from '@mikro-orm/postgresql';

/**
 * MikroORM 7 writes every parameter into the SQL text itself (`platform.formatQuery`) and sends the
 * result as a plain query, so PostgreSQL parses and plans every statement on every execution. This
 * driver sends the same statements with their parameters bound instead (`$1, $2, …`): the coalescing
 * client then runs them as named prepared statements, parsed once per connection (statement-batch.ts;
 * docs/adr/0004-fewer-round-trips-per-transaction.md). Whatever cannot be bound faithfully keeps
 * MikroORM's own path, written in: arrays (which MikroORM expands into lists), raw fragments, buffers,
 * identifiers (`??`), and texts with `$` or `;` in them.
 */

/** Bound form of a statement text, by MikroORM's text (`?` placeholders); null: not bindable. */
const boundTexts = new Map<string, { text: string; count: number } | null>();
const MAX_CACHED_TEXTS = 2_000;

function boundText(sql: string): { text: string; count: number } | null {
  let bound = boundTexts.get(sql);
  if (bound !== undefined) return bound;
  bound = null;
  if (!sql.includes('$') && !sql.includes(';') && !sql.includes('??') && !sql.includes('\\?')) {
    let n = 0;
    bound = { text: sql.replace(/\?/g, () => `$${++n}`), count: 0 };
    bound.count = n;
  }
  if (boundTexts.size < MAX_CACHED_TEXTS) boundTexts.set(sql, bound);
  return bound;
}

interface DatePlatform {
  formatDate(date: Date): string;
}

/** A parameter as MikroORM would write it, as a value to bind; undefined: not bindable. */
function bindable(value: unknown, platform: DatePlatform): { value: unknown } | undefined {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return { value };
    case 'number':
      return Number.isFinite(value) ? { value } : undefined;
    case 'bigint':
      return { value: value.toString() };
    case 'object':
      if (value === null) return { value: null };
      if (value instanceof Date) return { value: platform.formatDate(value) };
      if (isRaw(value) || Array.isArray(value) || ArrayBuffer.isView(value)) return undefined;
      // MikroORM writes a plain object (a JSON property) in as its JSON text.
      if (Utils.isPlainObject(value)) return { value: JSON.stringify(value) };
      return undefined;
    default:
      return undefined;
  }
}

/** The statement with bound parameters, or undefined when it must be written in as MikroORM does. */
/** `platform`: MikroORM's, which writes dates with its `formatDate` (internal in its types). */
export function bindParameters(sql: string, params: readonly unknown[], platform: object): { text: string; values: unknown[] } | undefined {
  // The protocol numbers parameters with 16 bits: a larger statement (a bulk insert) stays written in.
  if (params.length > 65_535) return undefined;
  const bound = boundText(sql);
  if (!bound || bound.count !== params.length) return undefined;
  const values: unknown[] = new Array(params.length);
  for (let i = 0; i < params.length; i++) {
    const b = bindable(params[i], platform as DatePlatform);
    if (!b) return undefined;
    values[i] = b.value;
  }
  return { text: bound.text, values };
}

/** MikroORM's `loggerContext` may carry the query's abort options; they go to Kysely, not to the logger. */
function splitAbort(loggerContext: any): { abort?: { signal?: AbortSignal; inflightQueryAbortStrategy?: unknown }; loggerContext: any } {
  if (loggerContext?.signal == null && loggerContext?.inflightQueryAbortStrategy == null) return { loggerContext };
  const { signal, inflightQueryAbortStrategy, ...rest } = loggerContext;
  return { abort: { signal, inflightQueryAbortStrategy }, loggerContext: rest };
}

export class BindingPostgreSqlConnection extends PostgreSqlConnection {
  override async execute<T extends QueryResult | EntityData<AnyEntity> | EntityData<AnyEntity>[] = EntityData<AnyEntity>[]>(
    query: any,
    params: any = [],
    method: 'all' | 'get' | 'run' = 'all',
    ctx?: any,
    loggerContext?: any,
  ): Promise<T> {
    let sql = query;
    let values = params;
    if (sql instanceof NativeQueryBuilder) sql = sql.toRaw();
    if (isRaw(sql)) {
      values = sql.params;
      sql = sql.sql;
    }
    if (typeof sql !== 'string' || !Array.isArray(values)) return super.execute(query, params, method, ctx, loggerContext);
    sql = this.config.get('onQuery')(sql, values);
    const bound = bindParameters(sql, values, this.platform);
    // MikroORM's own path runs onQuery again: it returns a marked text unchanged.
    if (!bound) return super.execute(query, params, method, ctx, loggerContext);
    await this.ensureConnection();
    const logger = this.config.getLogger();
    const logged = logger.isEnabled('query-params', loggerContext) ? this.platform.formatQuery(sql, values) : sql;
    const { abort, loggerContext: context } = splitAbort(loggerContext);
    return this.executeQuery(
      logged,
      async () => {
        const res = await (ctx ?? this.getClient()).executeQuery(CompiledQuery.raw(bound.text, bound.values), abort);
        return this.transformRawResult(res, method) as T;
      },
      { query: sql, params: values, ...context },
    );
  }
}

/** MikroORM's PostgreSQL driver on {@link BindingPostgreSqlConnection}. */
export class BindingPostgreSqlDriver extends PostgreSqlDriver {
  constructor(config: Configuration) {
    super(config);
    (this as unknown as { connection: PostgreSqlConnection }).connection = new BindingPostgreSqlConnection(this.config);
  }
}
