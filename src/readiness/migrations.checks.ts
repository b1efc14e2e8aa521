import type { MikroORM } from '../platform/db/orm.ts';
import { schemaStatus } from '../platform/db/migrate.ts';
import { fail, pass, type ReadinessRow } from './readiness.types.ts';

const firstLines = (sql: string, n = 3) => {
  const lines = sql.split('\n').map((l) => l.trim()).filter(Boolean);
  return lines.slice(0, n).join(' ') + (lines.length > n ? ` … (${lines.length - n} more statements)` : '');
};

/**
 * Pending migrations and entity/schema drift, read through an owner-role ORM (the migrator needs the
 * migrations table and the schema diff needs the full catalog view of the owner).
 */
export async function migrationRows(openOwnerOrm: () => Promise<MikroORM>): Promise<ReadinessRow[]> {
  let orm: MikroORM;
  try {
    orm = await openOwnerOrm();
  } catch (e) {
    const reason = `cannot connect as the migration owner (MIGRATION_DATABASE_URL): ${(e as Error).message}`;
    return [fail('migrations', reason), fail('schema-drift', reason)];
  }
  try {
    const { pending, drift } = await schemaStatus(orm);
    return [
      pending.length ? fail('migrations', `${pending.length} pending: ${pending.join(', ')} (run npm run db:migrate)`) : pass('migrations', 'no pending migrations'),
      drift ? fail('schema-drift', `entities and schema differ, a migration is missing: ${firstLines(drift)}`) : pass('schema-drift', 'schema matches the entities'),
    ];
  } finally {
    await orm.close(true);
  }
}
