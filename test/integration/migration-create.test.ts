import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defineEntity, p } from '@mikro-orm/core';
import { parseConfig } from '../../src/platform/config/config.ts';
import { createMigration } from '../../src/platform/db/migrate.ts';
import { MIGRATIONS_PATH } from '../../src/platform/db/orm.ts';
import { tenantIdProperty, tenantIsolationPolicy } from '../../src/platform/db/tenant-owned.ts';
import { entities } from '../../src/entities.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { TEST_JWT_SECRET } from '../helpers/env.ts';

/**
 * `npm run db:migration:create` (createMigration) writes what the entities add to the snapshot of the
 * last migration written, and nothing else: MikroORM's snapshot does not record stored routines, and
 * with them every migration written re-created `durable_expect` in its `up` and dropped it in its
 * `down` — rolling such a migration back took the function every checkpoint statement calls. The
 * snapshot in migrations/ is restored after each test.
 */
const SNAPSHOT = join(MIGRATIONS_PATH, '.snapshot-dealix.json');
let db: TestDatabase;
let config: ReturnType<typeof parseConfig>;
let snapshot: string;
let dir: string;

beforeAll(async () => {
  db = await createTestDatabase();
  config = parseConfig({ JWT_SECRET: TEST_JWT_SECRET, DATABASE_URL: db.appUrl, MIGRATION_DATABASE_URL: db.ownerUrl });
  snapshot = await readFile(SNAPSHOT, 'utf8');
  dir = await mkdtemp(join(tmpdir(), 'dealix-migration-create-'));
});
afterAll(async () => {
  if ((await readFile(SNAPSHOT, 'utf8')) !== snapshot) await writeFile(SNAPSHOT, snapshot);
  await rm(dir, { recursive: true, force: true });
  await db?.drop();
});

const written = async () => Promise.all((await readdir(dir)).map((f) => readFile(join(dir, f), 'utf8')));

describe('db:migration:create', () => {
  it('writes no migration when the entities are what the last migration left', async () => {
    const file = await createMigration(config, entities, { name: 'nothing', path: dir });
    expect(await written()).toEqual([]);
    expect(file).toBeUndefined();
  });

  it("writes a new table's migration without touching durable_expect", async () => {
    const Probe = defineEntity({
      name: 'MigrationProbe',
      tableName: 'migration_probes',
      properties: { id: p.uuid().primary(), tenantId: tenantIdProperty() },
      rowLevelSecurity: 'force',
      policies: [tenantIsolationPolicy('migration_probes')],
    });
    try {
      const file = await createMigration(config, [...entities, Probe], { name: 'probe', path: dir });
      expect(file).toMatch(/_probe\.ts$/);
      const [code] = await written();
      expect(code).toContain('create table "migration_probes"');
      expect(code).toContain('alter table "migration_probes" force row level security;');
      expect(code).not.toContain('durable_expect');
    } finally {
      await writeFile(SNAPSHOT, snapshot);
    }
  });
});
