/**
 * Migrations run_list_workflow_status_index, sweeper_pages_status_updated_id_index,
 * run_list_partial_status_indexes (and every later one: run_in_flight_index's index is checked too) build their `durable_runs` indexes with CREATE INDEX CONCURRENTLY and drop the one it replaces with DROP INDEX
 * CONCURRENTLY, outside any transaction (concurrent-index.ts; the migrator runs them alone: migrator.ts):
 * while one waits for a long transaction writing runs, the application still writes runs (a plain
 * CREATE INDEX would queue them all behind it). From an empty database `migrate()` applies every
 * migration (the transactional ones before them all-or-nothing, not left open beside the build); down
 * and up again; an INVALID index left by a concurrent build that failed halfway is dropped and built
 * again, not kept by IF NOT EXISTS; and the schema then matches the entities (what `npm run db:check` reports).
 */
import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createOrm } from '../../src/platform/db/orm.ts';
import { migrate, schemaStatus } from '../../src/platform/db/migrate.ts';
import { entities } from '../../src/entities.ts';
import { migrationTestDatabase } from '../helpers/migrations.ts';
import { waitFor, within } from '../helpers/poll.ts';

const PREVIOUS = 'Migration20261205002019_partner_offboardings_one_per_partner';
const THIS = ['Migration20261205032101_run_list_workflow_status_index', 'Migration20261205042755_sweeper_pages_status_updated_id_index'];
/** The third: the first one's index replaced by two partial ones. */
const PARTIAL = 'Migration20261205093738_run_list_partial_status_indexes';
/**
 * What going down to PREVIOUS reverts and migrating again applies: these two and every later migration
 * (the migrations folder, in name order, as the migrator runs them), so a new migration keeps this test true.
 */
const FROM_PREVIOUS = [
  ...THIS,
  ...readdirSync(fileURLToPath(new URL('../../migrations', import.meta.url)))
    .filter((f) => /^Migration\d+_\w+\.ts$/.test(f))
    .map((f) => f.replace(/\.ts$/, ''))
    .sort()
    .filter((n) => n > THIS[1]!),
];
/** The indexes these migrations leave, and (OLD) the ones they replace; the first one's own index is replaced by the third's. */
const ENDED_INDEX = "btree (tenant_id, workflow, status, created_at, id) WHERE (status = ANY (ARRAY['completed'::text, 'failed'::text, 'rejected'::text, 'approval_expired'::text, 'cancelled'::text]))";
const NEW = {
  durable_runs_tenant_workflow_ended_index: ENDED_INDEX,
  durable_runs_tenant_workflow_active_status_index: "btree (tenant_id, workflow, status, created_at, id) WHERE (status = ANY (ARRAY['pending'::text, 'running'::text, 'waiting'::text]))",
  durable_runs_status_updated_id_index: 'btree (status, updated_at, id)',
  // run_in_flight_index's, in place of durable_runs_tenant_active_index (OLD: it was there before them all).
  durable_runs_tenant_workflow_in_flight_index: "btree (tenant_id, workflow, status, created_at, id) WHERE (status = ANY (ARRAY['pending'::text, 'running'::text]))",
};
const REPLACED = 'durable_runs_tenant_workflow_status_created_index';
const OLD = {
  durable_runs_tenant_created_index: 'btree (tenant_id, created_at, id)',
  durable_runs_status_updated_index: 'btree (status, updated_at)',
  durable_runs_tenant_active_index: "btree (tenant_id, status) WHERE (status = ANY (ARRAY['pending'::text, 'running'::text, 'waiting'::text]))",
};

const database = migrationTestDatabase();
const admin = database.admin;

/** The indexes of durable_runs among NEW and OLD: definition, and whether the planner may use it. */
async function indexes(): Promise<Record<string, string>> {
  const rows = await admin(
    `select c.relname as name, i.indisvalid as valid, pg_get_indexdef(i.indexrelid) as def from pg_index i join pg_class c on c.oid = i.indexrelid
      where i.indrelid = 'durable_runs'::regclass and c.relname = any($1) order by 1`,
    [[...Object.keys(NEW), ...Object.keys(OLD), REPLACED]],
  );
  return Object.fromEntries(rows.map((r) => [r.name as string, `${(r.def as string).replace(/^.* USING /, '')}${r.valid ? '' : ' INVALID'}`]));
}

const insertRun = `insert into durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, correlation_id, step_count, created_at, updated_at)
  values ($1, $2, 'golden-path', 1, $3, 'completed', 'submitter-1', '{}', 'c', 4, now(), now())`;
const runParams = (tenant: string) => [randomUUID(), tenant, randomUUID().replaceAll('-', '')];

/** A client of its own (its backend pid read), ended by the caller. */
async function client(url: string): Promise<{ db: pg.Client; pid: number }> {
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  const { rows } = await db.query<{ pid: number }>('select pg_backend_pid() as pid');
  return { db, pid: rows[0]!.pid };
}

/** The backends of this database waiting for a lock `pid` holds. */
const blockedBy = async (pid: number) =>
  (await admin(`select count(*)::int as n from pg_stat_activity where datname = current_database() and $1 = any(pg_blocking_pids(pid))`, [pid]))[0]!.n as number;

describe('migrations run_list_workflow_status_index, sweeper_pages_status_updated_id_index and run_list_partial_status_indexes', () => {
  it('build and drop concurrently: while the build waits for a long transaction writing runs, the application role still inserts a run; down and up again, db:check clean', async () => {
    // Every migration from an empty database: the transactional ones first (one transaction), then each of these alone.
    const applied = await within(migrate(database.config, entities), 'migrate() from an empty database', 120_000);
    expect(applied.slice(applied.indexOf(PREVIOUS))).toEqual([PREVIOUS, ...FROM_PREVIOUS]);
    expect(FROM_PREVIOUS).toContain(PARTIAL);
    expect(await indexes()).toEqual(NEW);
    const check = await createOrm(database.config, { entities, role: 'owner', poolMax: 1 });
    const holder = await client(database.config.MIGRATION_DATABASE_URL!);
    const writer = await client(database.config.DATABASE_URL);
    try {
      // Down through both (each alone, concurrently too): the previous release's indexes are back.
      await within(check.migrator.down({ to: PREVIOUS }), 'down to the previous migration');
      expect(await indexes()).toEqual(OLD);
      expect((await schemaStatus(check)).pending).toEqual(FROM_PREVIOUS);

      // A long transaction writing runs (an operator's session, a slow step): any index build on the table waits for it.
      const tenant = randomUUID();
      await holder.db.query('begin');
      await holder.db.query(`select set_config('app.tenant_id', $1, true)`, [tenant]);
      await holder.db.query(insertRun, runParams(tenant));
      const migrated = migrate(database.config, entities);
      await waitFor(async () => (await blockedBy(holder.pid)) > 0, { what: 'the index build to wait for the open transaction' });

      // Meanwhile the application inserts a run, as a submission does: it does not queue behind the build.
      const other = randomUUID();
      const inserted = (async () => {
        await writer.db.query('begin');
        await writer.db.query(`select set_config('app.tenant_id', $1, true)`, [other]);
        await writer.db.query(insertRun, runParams(other));
        await writer.db.query('commit');
        return 'committed';
      })();
      let settled: string | undefined;
      void inserted.then((s) => (settled = s), (e: Error) => (settled = e.message));
      await waitFor(
        async () => {
          if (settled) return true;
          const waitsFor = (await admin(`select pg_blocking_pids($1) as pids`, [writer.pid]))[0]!.pids as number[];
          expect(waitsFor, 'the insert waits for another backend (a plain CREATE INDEX queues writes behind its lock)').toEqual([]);
          return false;
        },
        { what: 'the insert to commit' },
      );
      expect(settled).toBe('committed');

      await holder.db.query('commit');
      expect(await within(migrated, 'the migration once the long transaction has committed', 60_000)).toEqual(FROM_PREVIOUS);
      expect(await indexes()).toEqual(NEW);
      expect(await admin(`select count(*)::int as n from durable_runs`)).toEqual([{ n: 2 }]);
      expect(await schemaStatus(check)).toEqual({ pending: [], drift: '' });
    } finally {
      await holder.db.end();
      await writer.db.end();
      await check.close(true);
    }
  });

  it('drops and builds again an INVALID index a concurrent build left behind, which IF NOT EXISTS would keep', async () => {
    await within(migrate(database.config, entities), 'migrate()', 120_000);
    const check = await createOrm(database.config, { entities, role: 'owner', poolMax: 1 });
    try {
      await within(check.migrator.down({ to: PREVIOUS }), 'down to the previous migration');
      // A concurrent build that failed halfway (here: unique over a tenant's two runs) leaves its index, INVALID.
      const tenant = randomUUID();
      await admin(insertRun, runParams(tenant));
      await admin(insertRun, runParams(tenant));
      await expect(admin(`create unique index concurrently durable_runs_tenant_workflow_status_created_index on durable_runs (tenant_id)`)).rejects.toThrow(/could not create unique index/);
      expect((await indexes()).durable_runs_tenant_workflow_status_created_index).toBe('btree (tenant_id) INVALID');

      // And a valid partial index of the third migration's definition, built beforehand by hand: kept,
      // not built again (its predicate read back as pg_get_indexdef prints it).
      await admin(`create index durable_runs_tenant_workflow_ended_index on durable_runs (tenant_id, workflow, status, created_at, id) where status in ('completed', 'failed', 'rejected', 'approval_expired', 'cancelled')`);
      const oid = async () => (await admin(`select to_regclass('durable_runs_tenant_workflow_ended_index')::oid::int as oid`))[0]!.oid as number;
      const byHand = await oid();

      expect(await within(migrate(database.config, entities), 'migrate() over the leftover', 60_000)).toEqual(FROM_PREVIOUS);
      expect(await indexes()).toEqual(NEW);
      expect(await oid()).toBe(byHand);
      expect(await schemaStatus(check)).toEqual({ pending: [], drift: '' });

      // Down over a leftover too: the old index's build by hand failed halfway; down builds it again.
      await expect(admin(`create unique index concurrently durable_runs_tenant_created_index on durable_runs (tenant_id)`)).rejects.toThrow(/could not create unique index/);
      await within(check.migrator.down({ to: PREVIOUS }), 'down to the previous migration');
      expect(await indexes()).toEqual(OLD);
    } finally {
      await check.close(true);
    }
  });

  it('a build that fails halfway (its connection ended: a failover, an operator\'s pg_terminate_backend) fails migrate() and is not recorded; migrate() again finishes it', async () => {
    await within(migrate(database.config, entities), 'migrate()', 120_000);
    const check = await createOrm(database.config, { entities, role: 'owner', poolMax: 1 });
    const holder = await client(database.config.MIGRATION_DATABASE_URL!);
    try {
      await within(check.migrator.down({ to: PREVIOUS }), 'down to the previous migration');
      const tenant = randomUUID();
      await holder.db.query('begin');
      await holder.db.query(`select set_config('app.tenant_id', $1, true)`, [tenant]);
      await holder.db.query(insertRun, runParams(tenant));
      const migrated = migrate(database.config, entities);
      let failure: string | undefined;
      void migrated.catch((e: Error) => (failure = e.message));
      const build = await waitFor(
        async () => (await admin(`select pid from pg_stat_activity where datname = current_database() and $1 = any(pg_blocking_pids(pid))`, [holder.pid]))[0]?.pid as number | undefined,
        { what: 'the index build to wait for the open transaction' },
      );
      await admin(`select pg_terminate_backend($1)`, [build]);
      await waitFor(() => failure, { what: 'migrate() to fail' });
      expect(failure).toMatch(/terminat/);
      expect((await schemaStatus(check)).pending).toEqual(FROM_PREVIOUS);
      expect((await indexes()).durable_runs_tenant_workflow_status_created_index).toBe('btree (tenant_id, workflow, status, created_at, id) INVALID');

      await holder.db.query('commit');
      expect(await within(migrate(database.config, entities), 'migrate() over the leftover', 60_000)).toEqual(FROM_PREVIOUS);
      expect(await indexes()).toEqual(NEW);
    } finally {
      await holder.db.end();
      await check.close(true);
    }
  });
});
