/**
 * Two `db:migrate` at once (two release phases, two replicas' start hooks) on one database: one
 * applies the migrations, the other waits for it and then finds none pending (migrate.ts). Without
 * that, the second failed on the first's tables half-way, or — with the concurrent index builds
 * (concurrent-index.ts) — took the first's build in progress for a failed one's INVALID leftover,
 * dropped it once built and built it again (the runs list meanwhile without either index), and
 * recorded the migration a second time. The waiting one must not hold a snapshot while it waits: a
 * concurrent build waits for every older snapshot of the database, and would wait for it for ever.
 */
import { describe, expect, it } from 'vitest';
import { migrate } from '../../src/platform/db/migrate.ts';
import { entities } from '../../src/entities.ts';
import { migrationTestDatabase } from '../helpers/migrations.ts';
import { within } from '../helpers/poll.ts';

const database = migrationTestDatabase();

describe('migrate() twice at once', () => {
  it('one applies every migration, the other waits for it and applies none; each recorded once, every index valid', async () => {
    const both = await within(Promise.allSettled([migrate(database.config, entities), migrate(database.config, entities)]), 'both migrate() calls', 50_000);
    const failed = both.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason));
    expect(failed).toEqual([]);
    const applied = both.map((r) => (r as PromiseFulfilledResult<string[]>).value).sort((a, b) => a.length - b.length);
    expect(applied[0]).toEqual([]);
    const recorded = (await database.admin(`select name from mikro_orm_migrations order by id`)).map((r) => r.name as string);
    expect(recorded).toEqual(applied[1]);
    expect(await database.admin(`select c.relname from pg_index i join pg_class c on c.oid = i.indexrelid where not i.indisvalid`)).toEqual([]);
  });
});
