import pg from 'pg';
import { parseConfig } from '../../src/platform/config/config.ts';
import { setupDatabase } from '../../src/platform/db/roles.ts';
import { migrate } from '../../src/platform/db/migrate.ts';
import { entities } from '../../src/entities.ts';
import { randomBytes } from 'node:crypto';
import { TEST_ADMIN_URL, TEST_APP, TEST_JWT_SECRET, TEST_OWNER, pgUrl } from './env.ts';

/** Leftovers of interrupted runs are dropped only when this old and idle: other runs may share the server. */
const STALE_AFTER = '3 hours';

/**
 * Once per test run: roles in place, and a template database migrated as the owner. Each test file
 * then clones its own database from the template (fast) and connects as the application role.
 */
export default async function setup(): Promise<() => Promise<void>> {
  // A template of our own: the forks inherit process.env, so test/helpers/env.ts picks the name up there.
  const TEST_TEMPLATE_DB = `dealix_test_template_${randomBytes(4).toString('hex')}`;
  process.env.DEALIX_TEST_TEMPLATE_DB = TEST_TEMPLATE_DB;
  const admin = new pg.Client({ connectionString: TEST_ADMIN_URL });
  await admin.connect();
  // Leftovers of interrupted runs: old (directory untouched for STALE_AFTER) and without connections.
  const old = await admin.query(
    `SELECT datname FROM pg_database d
      WHERE (datname LIKE 'dealix\\_t\\_%' OR datname LIKE 'dealix\\_test\\_template%')
        AND (pg_stat_file('base/' || d.oid)).modification < now() - $1::interval
        AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datid = d.oid)`,
    [STALE_AFTER],
  );
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
