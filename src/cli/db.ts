/**
 * npm run db:setup | db:migrate | db:check | db:migration:create -- <name>
 * Thin entry: parse config, call the platform, print, set the exit code.
 */
import { loadConfig } from '../platform/config/config.ts';
import { setupDatabase } from '../platform/db/roles.ts';
import { createMigration, migrate, schemaStatus } from '../platform/db/migrate.ts';
import { createOrm } from '../platform/db/orm.ts';
import { entities } from '../entities.ts';
import { databaseProblem } from '../platform/db/connection-problem.ts';
import { refuseExtraArguments } from '../platform/process/command-line.ts';

const USAGE = 'usage: npm run db:setup | db:migrate | db:check | db:migration:create -- <name>';
const [command, ...rest] = process.argv.slice(2);
// Before the configuration is read: an argument a command does not take (`--help`) stops it.
refuseExtraArguments(USAGE, `db ${command}`, rest, command === 'migration:create' ? 1 : 0);
const config = loadConfig();
const adminUrl = config.DATABASE_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
// The connection each command makes: setup as the superuser, the others as the owner.
const [setting, url] = command === 'setup' ? ['DATABASE_ADMIN_URL', adminUrl] : ['MIGRATION_DATABASE_URL', config.MIGRATION_DATABASE_URL];

try {
  await run();
} catch (e) {
  // PostgreSQL down, a login refused, the database missing: one line naming the setting, not pg-pool's stack.
  const problem = databaseProblem(e, setting, url);
  if (!problem) throw e;
  console.error(`db ${command} failed: ${problem}`);
  process.exitCode = 1;
}

async function run(): Promise<void> {
  switch (command) {
    case 'setup': {
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
      console.error(USAGE);
      process.exitCode = 2;
  }
}
