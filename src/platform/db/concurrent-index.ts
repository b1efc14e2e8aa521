import pg from 'pg';
import { Migration } from '@mikro-orm/migrations';
import { pgClientConfig } from './pg-ssl.ts';
import { CONNECTION_BOUNDS } from './connection-bounds.ts';

/** A b-tree index: `columns` as pg_get_indexdef prints them (`tenant_id, created_at, id`). */
export interface IndexSpec {
  name: string;
  table: string;
  columns: string;
  /**
   * A partial index's predicate, as pg_get_indexdef prints it after `WHERE` (parenthesized:
   * `(status = ANY (ARRAY['pending'::text, 'running'::text]))`), which is also SQL PostgreSQL reads back:
   * a valid index of this definition is recognized and kept.
   */
  where?: string;
}

/**
 * For a migration that opts out of the transaction (`isTransactional()` false; migrator.ts runs it
 * alone): builds `build` with `CREATE INDEX CONCURRENTLY`, then drops `drop`, if given, with `DROP INDEX
 * CONCURRENTLY`. Neither blocks reads or writes of the table (a plain `CREATE INDEX` holds off every
 * write for the build, a plain `DROP INDEX` every read and write until the transaction commits);
 * each waits instead for the transactions already open on it.
 *
 * A concurrent build that failed halfway (cancelled, the connection lost, the migration's process
 * killed) leaves an INVALID index of that name, which `IF NOT EXISTS` would keep and the planner
 * never uses: that one, or one of another definition built under the name by hand, is dropped and
 * built again; a valid one of this definition (built beforehand by hand) is kept. Re-running after
 * any failure therefore finishes the job (`test/integration/concurrent-index-migrations.test.ts`).
 *
 * One connection of its own, without `DATABASE_STATEMENT_TIMEOUT` (30 s, set on the ORM's pooled
 * connections): a build on a large table takes longer, and a cancelled build is only the INVALID
 * leftover above. Its waits hold up nobody.
 *
 * Its connecting is bounded (connection-bounds.ts), its statements are not: a build sends nothing
 * until it is done, hours on a large table, so no bound on the server's silence could tell it from a
 * server gone silent. TCP keepalive (connection-bounds.ts) ends the wait when the server's host is
 * gone (its probes unanswered); a server there but silent holds the migration until an operator
 * stops it, and re-running it finishes the job (above).
 */
export async function replaceIndexConcurrently(url: string, build: IndexSpec | readonly IndexSpec[], drop?: string | readonly string[]): Promise<void> {
  const db = new pg.Client({ ...pgClientConfig(url), ...CONNECTION_BOUNDS });
  await db.connect();
  try {
    await db.query(`set statement_timeout = 0`);
    // Every new index before any old one goes: queries are never left without one they can use.
    for (const b of [build].flat()) {
      const where = b.where ? ` WHERE ${b.where}` : '';
      const { rows } = await db.query<{ valid: boolean; def: string; wanted: string }>(
        `select i.indisvalid as valid, pg_get_indexdef(i.indexrelid) as def,
                format('CREATE INDEX %s ON %s.%s USING btree (%s)%s', $1::text, current_schema(), $2::text, $3::text, $4::text) as wanted
           from pg_index i where i.indexrelid = to_regclass($1)`,
        [b.name, b.table, b.columns, where],
      );
      const found = rows[0];
      if (found && (!found.valid || found.def !== found.wanted)) await db.query(`drop index concurrently if exists "${b.name}"`);
      await db.query(`create index concurrently if not exists "${b.name}" on "${b.table}" (${quoted(b.columns)})${where}`);
    }
    for (const name of [drop ?? []].flat()) await db.query(`drop index concurrently if exists "${name}"`);
  } finally {
    await db.end();
  }
}

const quoted = (columns: string) =>
  columns
    .split(',')
    .map((c) => `"${c.trim()}"`)
    .join(', ');

/**
 * A migration that replaces one index of a large table (or several) by another, or by several,
 * concurrently (replaceIndexConcurrently): the new ones built before the old ones are dropped, so
 * queries are never left without either; `down` the other way round. Outside any transaction (migrator.ts runs it alone),
 * so nothing else goes in it.
 */
export abstract class IndexReplacementMigration extends Migration {
  /** The index (or indexes) `up` builds. */
  protected abstract readonly build: IndexSpec | readonly IndexSpec[];
  /** The index (or indexes) it replaces: `up` drops them, `down` builds them again. */
  protected abstract readonly replaces: IndexSpec | readonly IndexSpec[];

  override isTransactional(): boolean {
    return false;
  }

  override async up(): Promise<void> {
    await replaceIndexConcurrently(this.config.get('clientUrl')!, this.build, [this.replaces].flat().map((r) => r.name));
  }

  override async down(): Promise<void> {
    await replaceIndexConcurrently(this.config.get('clientUrl')!, this.replaces, [this.build].flat().map((b) => b.name));
  }
}
