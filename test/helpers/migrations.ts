import { afterAll, beforeAll } from 'vitest';
import { parseConfig } from '../../src/platform/config/config.ts';
import { createOrm } from '../../src/platform/db/orm.ts';
import { entities } from '../../src/entities.ts';
import { createTestDatabase, type TestDatabase } from './db.ts';
import { TEST_JWT_SECRET } from './env.ts';

/**
 * For a test of one migration: applies the migrations up to `previous` (as the owner) and returns the
 * names of those still pending, the migration under test first (later ones follow it).
 */
export async function migrateUpTo(config: ReturnType<typeof parseConfig>, previous: string): Promise<string[]> {
  const orm = await createOrm(config, { entities, role: 'owner', poolMax: 1 });
  try {
    await orm.migrator.up({ to: previous });
    return (await orm.migrator.getPending()).map((m) => m.name);
  } finally {
    await orm.close(true);
  }
}

/**
 * An empty database (roles, no schema) for a test of one migration, created before the file's tests
 * and dropped after them: `config` connects the application role and the owner to it, `admin` runs
 * a statement as the superuser (no RLS in the way) and returns its rows.
 */
export function migrationTestDatabase() {
  let db: TestDatabase | undefined;
  let config: ReturnType<typeof parseConfig> | undefined;
  let env: Record<string, string> | undefined;
  beforeAll(async () => {
    db = await createTestDatabase({ empty: true });
    env = { JWT_SECRET: TEST_JWT_SECRET, DATABASE_URL: db.appUrl, MIGRATION_DATABASE_URL: db.ownerUrl };
    config = parseConfig(env);
  });
  afterAll(async () => db?.drop());
  return {
    get config() {
      if (!config) throw new Error('the migration test database is created in beforeAll');
      return config;
    },
    /** The variables `config` was parsed from, for a test's own variant of it. */
    get env() {
      if (!env) throw new Error('the migration test database is created in beforeAll');
      return env;
    },
    admin: async (text: string, params: unknown[] = []) => (await db!.admin(text, params)).rows,
  };
}
