/**
 * The migrator (src/platform/db/migrator.ts) runs a migration that opts out of the transaction alone:
 * the migrations before it commit first (all-or-nothing among themselves), those after it start after
 * it, and a failure stops the call there. MikroORM's own ran it beside the open transaction of the
 * whole batch, on another pooled connection: with a pool of one it waited for the connection that
 * transaction held (`timeout exceeded when trying to connect`); with more, that connection could not
 * see a table the batch had just created. Also for `migrationsList` (how this test lists its own).
 */
import { describe, expect, it } from 'vitest';
import { MikroORM } from '@mikro-orm/postgresql';
import { Migration } from '@mikro-orm/migrations';
import { ormConfig } from '../../src/platform/db/orm.ts';
import { entities } from '../../src/entities.ts';
import { migrationTestDatabase } from '../helpers/migrations.ts';
import { within } from '../helpers/poll.ts';

class Migration1_table extends Migration {
  override up() {
    this.addSql(`create table things (id int not null, tenant uuid)`);
  }
  override down() {
    this.addSql(`drop table things`);
  }
}
class Migration2_index extends Migration {
  override isTransactional() {
    return false;
  }
  override up() {
    this.addSql(`create index concurrently things_id_index on things (id)`);
  }
  override down() {
    this.addSql(`drop index concurrently things_id_index`);
  }
}
class Migration3_column extends Migration {
  override up() {
    this.addSql(`alter table things add column name text`);
  }
  override down() {
    this.addSql(`alter table things drop column name`);
  }
}
class Migration4_fails extends Migration {
  override up() {
    this.addSql(`select 1 / 0`);
  }
}

const database = migrationTestDatabase();

async function orm(list: Array<new (...args: never[]) => Migration>) {
  const base = ormConfig(database.config, { entities, role: 'owner', poolMax: 1 });
  return MikroORM.init({ ...base, migrations: { ...base.migrations, migrationsList: list as never, snapshot: false, silent: true } });
}
const executed = async (o: MikroORM) => (await o.migrator.getExecuted()).map((m) => m.name);
const columns = async () => (await database.admin(`select column_name as c from information_schema.columns where table_name = 'things' order by 1`)).map((r) => r.c);
const thingIndexes = async () => (await database.admin(`select indexname as i from pg_indexes where tablename = 'things'`)).map((r) => r.i);

describe('migrator', () => {
  it('runs a non-transactional migration alone: the transactional ones before it commit first, a failure after it rolls back only its own batch; down through it too', async () => {
    const o = await orm([Migration1_table, Migration2_index, Migration3_column, Migration4_fails]);
    try {
      // One pooled connection, as the migration tests use: the index build must not wait for it.
      await expect(within(o.migrator.up(), 'up')).rejects.toThrow(/division by zero/);
      expect(await executed(o)).toEqual(['Migration1_table', 'Migration2_index']);
      expect(await thingIndexes()).toEqual(['things_id_index']);
      // Migration3 went with Migration4's failure: they ran in one transaction.
      expect(await columns()).toEqual(['id', 'tenant']);

      expect((await within(o.migrator.down({ to: 0 }), 'down')).map((m) => m.name)).toEqual(['Migration2_index', 'Migration1_table']);
      expect(await executed(o)).toEqual([]);
      expect(await columns()).toEqual([]);
    } finally {
      await o.close(true);
    }
    const ok = await orm([Migration1_table, Migration2_index, Migration3_column]);
    try {
      expect((await within(ok.migrator.up(), 'up')).map((m) => m.name)).toEqual(['Migration1_table', 'Migration2_index', 'Migration3_column']);
      expect(await columns()).toEqual(['id', 'name', 'tenant']);
      expect(await thingIndexes()).toEqual(['things_id_index']);
    } finally {
      await ok.close(true);
    }
  });
});
