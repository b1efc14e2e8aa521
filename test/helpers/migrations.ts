import type { parseConfig } from '../../src/platform/config/config.ts';
import { createOrm } from '../../src/platform/db/orm.ts';
import { entities } from '../../src/entities.ts';

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
