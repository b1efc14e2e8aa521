import pg from 'pg';
import { parseConfig } from '../../src/platform/config/config.ts';
import { setupDatabase } from '../../src/platform/db/roles.ts';
import { migrate } from '../../src/platform/db/migrate.ts';
import { entities } from '../../src/entities.ts';
import { TEST_ADMIN_URL, TEST_APP, TEST_JWT_SECRET, TEST_OWNER, TEST_TEMPLATE_DB, pgUrl } from './env.ts';

/**
 * Once per test run: roles in place, and a template database migrated as the owner. Each test file
 * then clones its own database from the template (fast) and connects as the application role.
 */
export default async function setup(): Promise<() => Promise<void>> {
  const admin = new pg.Client({ connectionString: TEST_ADMIN_URL });
  await admin.connect();
  await admin.query(`DROP DATABASE IF EXISTS ${TEST_TEMPLATE_DB} WITH (FORCE)`);
  // Leftovers of interrupted runs.
  const old = await admin.query(`SELECT datname FROM pg_database WHERE datname LIKE 'dealix_t_%'`);
  for (const r of old.rows) await admin.query(`DROP DATABASE IF EXISTS "${r.datname}" WITH (FORCE)`).catch(() => {});
  await admin.end();
  await setupDatabase({ adminUrl: TEST_ADMIN_URL, ownerUrl: pgUrl(TEST_OWNER, TEST_TEMPLATE_DB), appUrl: pgUrl(TEST_APP, TEST_TEMPLATE_DB) });
  const config = parseConfig({
    JWT_SECRET: TEST_JWT_SECRET,
    DATABASE_URL: pgUrl(TEST_APP, TEST_TEMPLATE_DB),
    MIGRATION_DATABASE_URL: pgUrl(TEST_OWNER, TEST_TEMPLATE_DB),
  });
  await migrate(config, entities);
  return async () => {
    const a = new pg.Client({ connectionString: TEST_ADMIN_URL });
    await a.connect();
    await a.query(`DROP DATABASE IF EXISTS ${TEST_TEMPLATE_DB} WITH (FORCE)`).catch(() => {});
    await a.end();
  };
}
