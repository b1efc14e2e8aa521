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

/** A statement text split at its `?` placeholders, by MikroORM's text; null: not bindable. */
const splitTexts = new Map<string, string[] | null>();
const MAX_CACHED_TEXTS = 2_000;

function placeholderSplit(sql: string): string[] | null {
  let parts = splitTexts.get(sql);
  if (parts !== undefined) return parts;
  parts = !sql.includes('$') && !sql.includes(';') && !sql.includes('??') && !sql.includes('\\?') ? sql.split('?') : null;
  if (splitTexts.size < MAX_CACHED_TEXTS) splitTexts.set(sql, parts);
  return parts;
}

interface DatePlatform {
  formatDate(date: Date): string;
}

const INT4 = 2 ** 31;
const INT8 = 2 ** 63;

/**
 * A parameter as MikroORM would write it, as a value to bind and the type PostgreSQL would give the
 * written-in literal; undefined: not bindable. A written-in number or boolean is typed by its literal
 * (`5` int4, `3000000000` int8, `2.5` numeric, `true` boolean), a bound parameter by its context, so
 * those are cast to the literal's type: `where int_col > $1::numeric` compares as `where int_col > 2.5`
 * did. Strings, dates and JSON are untyped literals either way.
 */
function bindable(value: unknown, platform: DatePlatform): { value: unknown; cast: string } | undefined {
  switch (typeof value) {
    case 'string':
      return { value, cast: '' };
    case 'boolean':
      return { value, cast: '::bool' };
    case 'number':
      if (!Number.isFinite(value)) return undefined;
      if (!Number.isInteger(value)) return { value, cast: '::numeric' };
      return { value, cast: value >= -INT4 && value < INT4 ? '::int4' : value >= -INT8 && value < INT8 ? '::int8' : '::numeric' };
    case 'bigint':
      // MikroORM writes a bigint in as a quoted string.
      return { value: value.toString(), cast: '' };
    case 'object':
      if (value === null) return { value: null, cast: '' };
      if (value instanceof Date) return { value: platform.formatDate(value), cast: '' };
      if (isRaw(value) || Array.isArray(value) || ArrayBuffer.isView(value)) return undefined;
      // MikroORM writes a plain object (a JSON property) in as its JSON text.
      if (Utils.isPlainObject(value)) return { value: JSON.stringify(value), cast: '' };
      return undefined;
    default:
      return undefined;
  }
}

/**
 * The statement with bound parameters, or undefined when it must be written in as MikroORM does.
 * `platform`: MikroORM's, which writes dates with its `formatDate` (internal in its types).
 */
export function bindParameters(sql: string, params: readonly unknown[], platform: object): { text: string; values: unknown[] } | undefined {
  // The protocol numbers parameters with 16 bits: a larger statement (a bulk insert) stays written in.
  if (params.length > 65_535) return undefined;
  const parts = placeholderSplit(sql);
  if (!parts || parts.length - 1 !== params.length) return undefined;
  const values: unknown[] = new Array(params.length);
  let text = parts[0]!;
  for (let i = 0; i < params.length; i++) {
    const b = bindable(params[i], platform as DatePlatform);
    if (!b) return undefined;
    values[i] = b.value;
    text += `$${i + 1}${b.cast}${parts[i + 1]}`;
  }
  return { text, values };
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
