/**
 * npm run db:setup | db:migrate | db:check | db:migration:create -- <name>
 * Thin entry: parse config, call the platform, print, set the exit code.
 */
import { loadConfig } from '../platform/config/config.ts';
import { setupDatabase } from '../platform/db/roles.ts';
import { createMigration, migrate, schemaStatus } from '../platform/db/migrate.ts';
import { createOrm } from '../platform/db/orm.ts';
import { entities } from '../entities.ts';

const [command, ...rest] = process.argv.slice(2);
const config = loadConfig();

switch (command) {
  case 'setup': {
    const adminUrl = config.DATABASE_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
    const log = await setupDatabase({ adminUrl, ownerUrl: config.MIGRATION_DATABASE_URL, appUrl: config.DATABASE_URL });
    console.log(log.length ? log.join('\n') : 'database and roles already in place');
    break;
  }
  case 'migrate': {
    const applied = await migrate(config, entities);
    console.log(applied.length ? `applied: ${applied.join(', ')}` : 'no pending migrations');
    break;
  }
  case 'check': {
    const orm = await createOrm(config, { entities, role: 'owner', poolMax: 1 });
    try {
      const { pending, drift } = await schemaStatus(orm);
      if (pending.length) console.error(`pending migrations: ${pending.join(', ')}`);
      if (drift) console.error(`entities and schema differ; a migration is missing:\n${drift}`);
      if (pending.length || drift) process.exitCode = 1;
      else console.log('schema matches the entities; no pending migrations');
    } finally {
      await orm.close(true);
    }
    break;
  }
  case 'migration:create': {
    const fileName = await createMigration(config, entities, rest[0] ? { name: rest[0] } : {});
    console.log(fileName ? `created ${fileName}` : 'no changes: nothing to migrate');
    break;
  }
  default:
    console.error('usage: db.ts setup | migrate | check | migration:create <name>');
    process.exitCode = 2;
}
