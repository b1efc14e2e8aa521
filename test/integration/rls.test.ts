import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import type { EntityMetadata } from '@mikro-orm/core';
import { startStack } from '../helpers/stack.ts';
import { TEST_APP } from '../helpers/env.ts';
import { TenantRows, insertSql, type Row } from '../helpers/tenant-rows.ts';
import { sqlState } from '../helpers/sql-state.ts';
import { isTenantOwned, OPERATOR_DB_ROLE, SYSTEM_ROLE } from '../../src/platform/db/tenant-owned.ts';
import { systemEm, tenantEm } from '../../src/platform/db/tenant-em.ts';
import { createOrm, type MikroORM } from '../../src/platform/db/orm.ts';
import { formatFindings, inspectOrmCatalog } from '../../src/platform/db/catalog.ts';
import { entities } from '../../src/entities.ts';
import { APP_UPDATE_COLUMNS, APPEND_ONLY_TABLES, NO_DELETE_TABLES, READ_ONLY_TABLES } from '../../src/platform/db/roles.ts';

/**
 * Row-level security, proven as the application role on every tenant-owned table the ORM knows, so
 * tables added later are covered without anyone touching this file: select, insert, update and delete
 * under tenant A, tenant B, no tenant and an empty tenant setting, over plain `pg` and through
 * tenantEm; the catalog invariants; tenants interleaved on a pool of two connections; and the narrow
 * system role. Rows are seeded as the superuser; every assertion about isolation runs as dealix_app.
 */

const stack = await startStack({ api: false });
const orm = stack.container.orm;
const metas: EntityMetadata[] = [...orm.getMetadata().getAll().values()]
  .filter((m) => !m.embeddable && !m.virtual && isTenantOwned(m))
  .sort((a, b) => a.tableName.localeCompare(b.tableName));
const tables = metas.map((m) => m.tableName);

const admin = new pg.Client({ connectionString: stack.db.adminUrl });
let rows: TenantRows;

beforeAll(async () => {
  await admin.connect();
  rows = await new TenantRows(admin).load(metas);
});
afterAll(async () => {
  await admin.end();
  await stack.stop();
});

type Ctx = 'tenant A' | 'tenant B' | 'no' | 'empty-string';
const CONTEXTS: Ctx[] = ['tenant A', 'tenant B', 'no', 'empty-string'];

interface Tenants {
  /** The tenant in context (A or B); undefined without a context. */
  own: string | undefined;
  /** Tenants whose rows the context must not reach. */
  others: [string, ...string[]];
  /** What `app.tenant_id` is set to (undefined: never set on this connection). */
  setting: string | undefined;
}

/** Fresh tenants per test, so every count is exact and unique keys never collide. */
function tenantsFor(ctx: Ctx): Tenants {
  const a = randomUUID();
  const b = randomUUID();
  if (ctx === 'tenant A') return { own: a, others: [b], setting: a };
  if (ctx === 'tenant B') return { own: b, others: [a], setting: b };
  return { own: undefined, others: [a, b], setting: ctx === 'empty-string' ? '' : undefined };
}

/**
 * One transaction as the application role, the tenant set as tenantEm sets it: set_config(…, true);
 * with `role`, as the role it takes on by SET LOCAL ROLE (the operator routes' role for a table only it writes).
 */
/** The writer of a table the application only reads that is no role the application reaches, but the owner role itself (a login of its own). */
const OWNER = Symbol('the owner role');

async function asApp<T>(setting: string | undefined, fn: (c: pg.Client) => Promise<T>, role?: string | typeof OWNER): Promise<T> {
  const c = new pg.Client({ connectionString: role === OWNER ? stack.db.ownerUrl : stack.db.appUrl });
  await c.connect();
  try {
    await c.query('begin');
    if (setting !== undefined) await c.query(`select set_config('app.tenant_id', $1, true)`, [setting]);
    if (typeof role === 'string') await c.query(`select set_config('role', $1, true)`, [role]);
    const result = await fn(c);
    await c.query('commit');
    return result;
  } finally {
    await c.end();
  }
}

/**
 * A no-op update of a column the application role may update: tenant_id, or on a table it updates in a
 * few columns only (roles.ts, APP_UPDATE_COLUMNS) the first of them, since any other is refused outright.
 */
const touchColumn = (table: string): string => APP_UPDATE_COLUMNS[table]?.[0] ?? 'tenant_id';
const touchSql = (table: string): string => `"${touchColumn(table)}" = "${touchColumn(table)}"`;

async function adminRows(table: string, ids: unknown[]): Promise<Row[]> {
  const pk = rows.spec(table).pk;
  return (await admin.query(`select * from "${table}" where "${pk}" = any($1::uuid[])`, [ids])).rows;
}

describe.each(tables)('%s over pg as the application role', (table) => {
  const pk = () => rows.spec(table).pk;
  // A table the application only reads (roles.ts) is written by the operator role alone (the token
  // revocations: by the owner role, through the operator's command, ADR 0018), under the same isolation
  // policy: the write checks below run as that role; the application role's are refused outright.
  const readOnly = READ_ONLY_TABLES.includes(table);
  const writer = readOnly ? (table === 'token_revocations' ? OWNER : OPERATOR_DB_ROLE) : undefined;
  /** One seeded row for the tenant in context (if any) and one for each other tenant. */
  const seedAll = async (t: Tenants) => ({
    mine: t.own ? await rows.seed(table, t.own) : undefined,
    theirs: await Promise.all(t.others.map((o) => rows.seed(table, o))),
  });

  it.each(CONTEXTS)("select under %s context returns only that tenant's rows", async (ctx) => {
    const t = tenantsFor(ctx);
    const { mine, theirs } = await seedAll(t);
    const seen = await asApp(t.setting, async (c) => (await c.query(`select "${pk()}" as id, tenant_id from "${table}"`)).rows);
    if (mine) expect(seen.map((r) => r.id)).toContain(mine[pk()]);
    expect(seen.filter((r) => r.tenant_id !== t.own)).toEqual([]);
    expect(theirs.every((r) => !seen.some((s) => s.id === r[pk()]))).toBe(true);
    expect(await adminRows(table, theirs.map((r) => r[pk()]))).toHaveLength(theirs.length);
  });

  it.each(CONTEXTS)("insert under %s context is refused (42501) for any other tenant's row", async (ctx) => {
    const t = tenantsFor(ctx);
    const foreign = await rows.build(table, t.others[0]);
    const q = insertSql(table, foreign);
    expect(await sqlState(asApp(t.setting, (c) => c.query(q.text, q.values), writer))).toBe('42501');
    expect(await adminRows(table, [foreign[pk()]])).toEqual([]);
    if (t.own) {
      const mine = await rows.build(table, t.own);
      const ok = insertSql(table, mine);
      const readBack = await asApp(t.setting, async (c) => {
        await c.query(ok.text, ok.values);
        return (await c.query(`select tenant_id from "${table}" where "${pk()}" = $1`, [mine[pk()]])).rows;
      }, writer);
      expect(readBack).toEqual([{ tenant_id: t.own }]);
    }
  });

  // Append-only tables (roles.ts): the application role may not update or delete at all; the others are checked row by row.
  const appendOnly = APPEND_ONLY_TABLES.includes(table);
  (appendOnly ? it : it.skip).each(CONTEXTS)("update and delete under %s context are refused outright (42501) on an append-only table", async (ctx) => {
    const t = tenantsFor(ctx);
    const { mine, theirs } = await seedAll(t);
    for (const r of [...(mine ? [mine] : []), ...theirs]) {
      expect(await sqlState(asApp(t.setting, (c) => c.query(`update "${table}" set tenant_id = tenant_id where "${pk()}" = $1`, [r[pk()]])))).toBe('42501');
      expect(await sqlState(asApp(t.setting, (c) => c.query(`delete from "${table}" where "${pk()}" = $1`, [r[pk()]])))).toBe('42501');
    }
    expect(await adminRows(table, [...(mine ? [mine] : []), ...theirs].map((r) => r[pk()]))).toHaveLength(theirs.length + (mine ? 1 : 0));
  });

  (readOnly ? it : it.skip).each(CONTEXTS)("insert, update and delete under %s context are refused outright (42501) for the application role, its own row included, on a table it only reads", async (ctx) => {
    const t = tenantsFor(ctx);
    const { mine, theirs } = await seedAll(t);
    const all = [...(mine ? [mine] : []), ...theirs];
    for (const r of all) {
      expect(await sqlState(asApp(t.setting, (c) => c.query(`update "${table}" set tenant_id = tenant_id where "${pk()}" = $1`, [r[pk()]])))).toBe('42501');
      expect(await sqlState(asApp(t.setting, (c) => c.query(`delete from "${table}" where "${pk()}" = $1`, [r[pk()]])))).toBe('42501');
    }
    if (t.own) {
      const q = insertSql(table, await rows.build(table, t.own));
      expect(await sqlState(asApp(t.setting, (c) => c.query(q.text, q.values)))).toBe('42501');
    }
    expect(await adminRows(table, all.map((r) => r[pk()]))).toHaveLength(all.length);
  });

  (appendOnly ? it.skip : it).each(CONTEXTS)("update under %s context touches no other tenant's row and cannot move a row to another tenant", async (ctx) => {
    const t = tenantsFor(ctx);
    const { mine, theirs } = await seedAll(t);
    const touch = (id: unknown) => asApp(t.setting, (c) => c.query(`update "${table}" set ${touchSql(table)} where "${pk()}" = $1`, [id]), writer);
    for (const r of theirs) expect((await touch(r[pk()])).rowCount).toBe(0);
    expect((await asApp(t.setting, (c) => c.query(`update "${table}" set ${touchSql(table)}`), writer)).rowCount).toBe(mine ? 1 : 0);
    if (mine) {
      expect((await touch(mine[pk()])).rowCount).toBe(1);
      const move = asApp(t.setting, (c) => c.query(`update "${table}" set tenant_id = $2 where "${pk()}" = $1`, [mine[pk()], t.others[0]]), writer);
      expect(await sqlState(move)).toBe('42501');
      expect((await adminRows(table, [mine[pk()]]))[0]!.tenant_id).toBe(t.own);
    }
    for (const r of await adminRows(table, theirs.map((x) => x[pk()]))) expect(t.others).toContain(r.tenant_id);
  });

  // Tables the application never deletes from (roles.ts): delete is refused outright, the tenant's own rows included.
  const noDelete = NO_DELETE_TABLES.includes(table);
  (noDelete ? it : it.skip).each(CONTEXTS)("delete under %s context is refused outright (42501), its own rows included, on a table the application never deletes from", async (ctx) => {
    const t = tenantsFor(ctx);
    const { mine, theirs } = await seedAll(t);
    const all = [...(mine ? [mine] : []), ...theirs];
    for (const r of all) {
      expect(await sqlState(asApp(t.setting, (c) => c.query(`delete from "${table}" where "${pk()}" = $1`, [r[pk()]])))).toBe('42501');
    }
    expect(await sqlState(asApp(t.setting, (c) => c.query(`delete from "${table}"`)))).toBe('42501');
    expect(await adminRows(table, all.map((r) => r[pk()]))).toHaveLength(all.length);
  });

  (appendOnly || noDelete ? it.skip : it).each(CONTEXTS)("delete under %s context removes no other tenant's row", async (ctx) => {
    const t = tenantsFor(ctx);
    const { mine, theirs } = await seedAll(t);
    for (const r of theirs) {
      expect((await asApp(t.setting, (c) => c.query(`delete from "${table}" where "${pk()}" = $1`, [r[pk()]]), writer)).rowCount).toBe(0);
    }
    expect(await adminRows(table, theirs.map((r) => r[pk()]))).toHaveLength(theirs.length);
    if (mine) {
      expect((await asApp(t.setting, (c) => c.query(`delete from "${table}" where "${pk()}" = $1`, [mine[pk()]]), writer)).rowCount).toBe(1);
      expect(await adminRows(table, [mine[pk()]])).toEqual([]);
    }
  });
});

describe.each(tables)('%s through tenantEm', (table) => {
  const meta = () => rows.spec(table).meta;
  const pkProp = () => rows.spec(table).pkProp;
  const data = (row: Row) => rows.toEntityData(table, row);
  /** An update of `row` to `tenant`, or on a table updated in a few columns only (touchColumn) of one of them to its own value. */
  const retarget = (row: Row, tenant: string): Record<string, unknown> => {
    if (!APP_UPDATE_COLUMNS[table]) return { tenantId: tenant };
    const prop = meta().props.find((p) => p.fieldNames?.[0] === touchColumn(table))!.name as string;
    return { [prop]: data(row)[prop] };
  };

  it.each(['tenant A', 'tenant B'] as const)('under %s: reads, updates, deletes and inserts only its own rows', async (ctx) => {
    const t = tenantsFor(ctx);
    const own = t.own!;
    const other = t.others[0];
    const mine = await rows.seed(table, own);
    const theirs = await rows.seed(table, other);
    const idOf = (r: Row) => r[rows.spec(table).pk];
    const em = tenantEm(orm, own);
    const found = (await em.fork().find(meta().class, {})) as Record<string, unknown>[];
    expect(found.map((e) => e.tenantId)).toEqual([own]);
    if (READ_ONLY_TABLES.includes(table)) {
      // Read-only for the application (only the operator role writes it): no insert, update or delete at all, its own row included.
      expect(await sqlState(em.fork().nativeUpdate(meta().class, { [pkProp()]: idOf(mine) }, { tenantId: own }))).toBe('42501');
      expect(await sqlState(em.fork().nativeDelete(meta().class, { [pkProp()]: idOf(mine) }))).toBe('42501');
      expect(await sqlState(em.fork().insert(meta().class, data(await rows.build(table, own))))).toBe('42501');
      expect((await adminRows(table, [idOf(theirs), idOf(mine)])).length).toBe(2);
      return;
    }
    if (APPEND_ONLY_TABLES.includes(table)) {
      // Append-only: no update or delete at all, its own rows included.
      expect(await sqlState(em.fork().nativeUpdate(meta().class, { [pkProp()]: idOf(mine) }, { tenantId: own }))).toBe('42501');
      expect(await sqlState(em.fork().nativeDelete(meta().class, { [pkProp()]: idOf(mine) }))).toBe('42501');
      expect(await sqlState(em.fork().insert(meta().class, data(await rows.build(table, other))))).toBe('42501');
      expect(await sqlState(em.fork().insert(meta().class, data(await rows.build(table, own))))).toBe('succeeded');
      expect((await adminRows(table, [idOf(theirs), idOf(mine)])).length).toBe(2);
      return;
    }
    const noDelete = NO_DELETE_TABLES.includes(table);
    expect(await em.fork().nativeUpdate(meta().class, { [pkProp()]: idOf(theirs) }, retarget(theirs, other))).toBe(0);
    if (noDelete) expect(await sqlState(em.fork().nativeDelete(meta().class, { [pkProp()]: idOf(theirs) }))).toBe('42501');
    else expect(await em.fork().nativeDelete(meta().class, { [pkProp()]: idOf(theirs) })).toBe(0);
    expect(await sqlState(em.fork().nativeUpdate(meta().class, { [pkProp()]: idOf(mine) }, { tenantId: other }))).toBe('42501');
    expect(await sqlState(em.fork().insert(meta().class, data(await rows.build(table, other))))).toBe('42501');
    if (noDelete) {
      // Never deleted by the application: refused outright, its own row included, which stays.
      expect(await sqlState(em.fork().nativeDelete(meta().class, { [pkProp()]: idOf(mine) }))).toBe('42501');
      expect(await adminRows(table, [idOf(mine)])).toHaveLength(1);
      // Removed as the superuser, so the insert below meets no unique key of one row per tenant (approval_policies).
      await admin.query(`delete from "${table}" where "${rows.spec(table).pk}" = $1`, [idOf(mine)]);
      // And the versions it recorded: a first policy again is version 1, whose history row must be its own (record_version).
      if (table === 'approval_policies') await admin.query(`delete from approval_policy_versions where tenant_id = $1`, [own]);
    } else {
      expect(await em.fork().nativeDelete(meta().class, { [pkProp()]: idOf(mine) })).toBe(1);
    }
    expect(await sqlState(em.fork().insert(meta().class, data(await rows.build(table, own))))).toBe('succeeded');
    expect((await adminRows(table, [idOf(theirs)]))[0]!.tenant_id).toBe(other);
  });

  it('without a tenant: an unbound manager reads nothing and cannot write; tenantEm refuses an empty tenant', async () => {
    const t = tenantsFor('no');
    const theirs = await rows.seed(table, t.others[0]);
    const idOf = (r: Row) => r[rows.spec(table).pk];
    const bare = orm.em.fork();
    expect(await bare.find(meta().class, {})).toEqual([]);
    if (APPEND_ONLY_TABLES.includes(table) || READ_ONLY_TABLES.includes(table)) {
      expect(await sqlState(bare.nativeUpdate(meta().class, { [pkProp()]: idOf(theirs) }, { tenantId: t.others[1] }))).toBe('42501');
      expect(await sqlState(orm.em.fork().nativeDelete(meta().class, {}))).toBe('42501');
    } else {
      expect(await bare.nativeUpdate(meta().class, { [pkProp()]: idOf(theirs) }, retarget(theirs, t.others[1]!))).toBe(0);
      if (NO_DELETE_TABLES.includes(table)) expect(await sqlState(orm.em.fork().nativeDelete(meta().class, {}))).toBe('42501');
      else expect(await bare.nativeDelete(meta().class, {})).toBe(0);
    }
    expect(await sqlState(orm.em.fork().insert(meta().class, data(await rows.build(table, t.others[0]))))).toBe('42501');
    expect(() => tenantEm(orm, '')).toThrow(TypeError);
    expect(await adminRows(table, [idOf(theirs)])).toHaveLength(1);
  });
});

describe('catalog invariants of the migrated schema', () => {
  it('every table with tenant_id has RLS forced and a USING + WITH CHECK tenant policy, and the suite covers them all', async () => {
    const report = await inspectOrmCatalog(orm, { appRole: TEST_APP.user });
    expect(report.failures, formatFindings(report.failures)).toEqual([]);
    const withTenantColumn = report.tables.filter((t) => t.hasTenantColumn).map((t) => t.table);
    expect(withTenantColumn).toEqual(tables);
    for (const t of report.tables) {
      expect({ table: t.table, enabled: t.rlsEnabled, forced: t.rlsForced, indexed: t.tenantIndexed }).toEqual({ table: t.table, enabled: true, forced: true, indexed: true });
      const iso = t.policies.find((p) => p.name === t.isolationPolicy);
      expect(iso?.command, t.table).toBe('ALL');
      expect(iso?.using, t.table).toMatch(/current_setting\('app\.tenant_id'/);
      expect(iso?.check, t.table).toMatch(/current_setting\('app\.tenant_id'/);
    }
  });

  it("a checkpoint cannot name another tenant's run: its foreign key carries the tenant (referential checks bypass RLS)", async () => {
    const report = await inspectOrmCatalog(orm, { appRole: TEST_APP.user });
    const fkFindings = report.findings.filter((f) => f.check === 'tenant-foreign-key');
    expect(fkFindings, formatFindings(fkFindings)).toEqual([]);
    const a = randomUUID();
    const b = randomUUID();
    const run = await rows.seed('durable_runs', a);
    const checkpoint = async (tenant: string) => ({ ...(await rows.build('durable_checkpoints', tenant)), run_id: run.id, sequence_num: 1 });
    // Tenant B, under its own setting, names tenant A's run: a single-column key on run_id would accept it.
    const foreign = insertSql('durable_checkpoints', await checkpoint(b));
    expect(await sqlState(asApp(b, (c) => c.query(foreign.text, foreign.values)))).toBe('23503');
    // Tenant A's own checkpoint for the same run is accepted.
    const own = insertSql('durable_checkpoints', await checkpoint(a));
    expect(await sqlState(asApp(a, (c) => c.query(own.text, own.values)))).toBe('succeeded');
  });

  it('the application role is no superuser, has no BYPASSRLS, owns nothing and cannot truncate', async () => {
    const report = await inspectOrmCatalog(orm, { appRole: TEST_APP.user });
    const app = report.roles.find((r) => r.role === TEST_APP.user)!;
    expect(app).toMatchObject({ exists: true, superuser: false, bypassRls: false, inherit: false, owns: [], unsafePrivileges: [], untenantedPrivileges: [], canCreateIn: [] });
    // Belt and braces, from the connection the app itself uses:
    const [me] = await orm.em.fork().execute(`select current_user as role, rolsuper, rolbypassrls from pg_roles where rolname = current_user`);
    expect(me).toEqual({ role: TEST_APP.user, rolsuper: false, rolbypassrls: false });
    expect(await sqlState(asApp(undefined, (c) => c.query(`truncate "${tables[0]}"`)))).toBe('42501');
  });
});

describe('column-level UPDATE grants of the application role', () => {
  // decide() trusts the request's class and required_approvals as the row holds them: with UPDATE on
  // them one approver could end a class C (four-eyes) wait by lowering them before deciding.
  it("refuses (42501) an update of a waiting approval request's class or required approvals, its own row included, and allows what decide/expire/cancel write", async () => {
    const tenant = randomUUID();
    const req = await rows.seed('approval_requests', tenant);
    const update = (set: string) => sqlState(asApp(tenant, (c) => c.query(`update approval_requests set ${set} where id = $1`, [req.id])));
    expect(await update('required_approvals = 1')).toBe('42501');
    expect(await update(`approval_class = 'A'`)).toBe('42501');
    expect(await update('required_approvals = 1, status = status')).toBe('42501');
    expect(await update('status = status, decided_at = decided_at, updated_at = now()')).toBe('succeeded');
    expect((await adminRows('approval_requests', [req.id]))[0]).toMatchObject({ approval_class: req.approval_class, required_approvals: req.required_approvals });
  });

  it.each(Object.keys(APP_UPDATE_COLUMNS))('%s: every column but those the code writes is refused (42501) under the row\'s own tenant; those are allowed', async (table) => {
    const tenant = randomUUID();
    const row = await rows.seed(table, tenant);
    const pk = rows.spec(table).pk;
    const allowed = APP_UPDATE_COLUMNS[table]!;
    const columns = (await admin.query(`select column_name from information_schema.columns where table_schema = 'public' and table_name = $1 order by ordinal_position`, [table])).rows.map((r) => r.column_name as string);
    expect(columns).toEqual(expect.arrayContaining([...allowed]));
    for (const col of columns) {
      const outcome = await sqlState(asApp(tenant, (c) => c.query(`update "${table}" set "${col}" = "${col}" where "${pk}" = $1`, [row[pk]])));
      expect(outcome, `${table}.${col}`).toBe(allowed.includes(col) ? 'succeeded' : '42501');
    }
  });
});

describe('tenants interleaved on a pool of two connections', () => {
  let pooled: MikroORM;
  beforeAll(async () => {
    pooled = await createOrm(stack.config, { entities, poolMax: 2 });
  });
  afterAll(async () => pooled?.close(true));

  it('hundreds of interleaved tenantEm operations never see, or write, another tenant', async () => {
    const [A, B] = [randomUUID(), randomUUID()];
    for (const table of tables) for (const tenant of [A, B]) await rows.seed(table, tenant);
    // Tables whose only unique key is the tenant itself (one row per tenant: a unique key, or the primary key as tenant_limits') take no further inserts;
    // nor do those the application only reads (roles.ts: refused outright, checked per table above).
    const insertable = tables.filter(
      (t) => rows.spec(t).pk !== 'tenant_id' && !rows.spec(t).meta.uniques.some((u) => [u.properties].flat().join() === 'tenantId') && !READ_ONLY_TABLES.includes(t),
    );
    const pids = new Set<number>();
    const writes: { table: string; id: unknown; tenant: string; stored: boolean }[] = [];
    const next = seededRandom(20261124);

    const op = async (i: number) => {
      const table = tables[i % tables.length]!;
      const cls = rows.spec(table).meta.class;
      const who = [A, B, undefined][next(3)];
      const em = who ? tenantEm(pooled, who) : pooled.em.fork();
      switch (next(4)) {
        case 0: {
          const found = (await em.find(cls, {})) as Record<string, unknown>[];
          expect(found.every((e) => e.tenantId === who)).toBe(true);
          if (who) expect(found.length).toBeGreaterThanOrEqual(1);
          else expect(found).toEqual([]);
          return;
        }
        case 1: {
          const [s] = await em.execute(`select nullif(current_setting('app.tenant_id', true), '') as tenant, pg_backend_pid() as pid`);
          pids.add(s!.pid);
          expect(s!.tenant).toBe(who ?? null);
          return;
        }
        case 2: {
          // Bound: its own row succeeds and the other tenant's is refused; unbound: everything is refused.
          const target = insertable[i % insertable.length]!;
          const owner = who ? (next(2) ? who : who === A ? B : A) : [A, B][next(2)]!;
          const row = await rows.build(target, owner);
          const outcome = await sqlState(em.insert(rows.spec(target).meta.class, rows.toEntityData(target, row)));
          expect(outcome).toBe(who === owner ? 'succeeded' : '42501');
          writes.push({ table: target, id: row[rows.spec(target).pk], tenant: owner, stored: who === owner });
          return;
        }
        default: {
          // A transaction that fails half-way must not leave its tenant on the connection.
          await expect(em.transactional(async (tx) => {
            await tx.find(cls, {});
            throw new Error('rolled back on purpose');
          })).rejects.toThrow('rolled back on purpose');
        }
      }
    };
    for (let batch = 0; batch < 30; batch++) await Promise.all(Array.from({ length: 12 }, (_, j) => op(batch * 12 + j)));

    expect(pids.size).toBeGreaterThanOrEqual(1);
    expect(pids.size).toBeLessThanOrEqual(2);
    // As the superuser: every accepted insert is stored under its own tenant, no refused one exists.
    expect(writes.some((w) => w.stored) && writes.some((w) => !w.stored)).toBe(true);
    for (const w of writes) {
      const stored = await adminRows(w.table, [w.id]);
      expect(stored.map((r) => r.tenant_id), `${w.table} ${String(w.id)}`).toEqual(w.stored ? [w.tenant] : []);
    }
  });
});

describe(`the system role (${SYSTEM_ROLE}) through systemEm`, () => {
  it('reads the granted durable_runs columns across tenants, and nothing else', async () => {
    const [A, B] = [randomUUID(), randomUUID()];
    const runs = [await rows.seed('durable_runs', A), await rows.seed('durable_runs', B)];
    const ids = runs.map((r) => r.id);
    const sys = () => systemEm(orm);
    const seen = await sys().execute(`select id, tenant_id, workflow, status, sequence_num, step_count, updated_at, idempotency_hash from durable_runs where id in (?, ?)`, ids);
    expect(seen.map((r) => r.tenant_id).sort()).toEqual([A, B].sort());
    expect(seen.map((r) => r.idempotency_hash).sort()).toEqual(runs.map((r) => r.idempotency_hash).sort());
    const [who] = await sys().execute('select current_user as role');
    expect(who!.role).toBe(SYSTEM_ROLE);
    for (const column of ['input', 'output', 'error', 'principal', 'correlation_id', 'trace_id', 'traceparent']) {
      expect(await sqlState(sys().execute(`select ${column} from durable_runs limit 1`)), column).toBe('42501');
    }
    expect(await sqlState(sys().execute(`update durable_runs set status = 'failed' where id = ?`, [ids[0]]))).toBe('42501');
    for (const table of tables) expect(await sqlState(sys().execute(`select * from "${table}" limit 1`)), table).toBe('42501');
    // Idempotency-key expiry: expired keys of any tenant are visible (id, tenant, expiry) and deletable; live ones are not.
    const live = await rows.seed('idempotency_keys', A);
    const expired = await rows.seed('idempotency_keys', B);
    await admin.query(`update idempotency_keys set expires_at = now() + (case when id = $1 then 1 else -1 end) * interval '1 hour' where id in ($1, $2)`, [live.id, expired.id]);
    const keys = [live.id, expired.id];
    expect((await sys().execute(`select id, tenant_id, expires_at from idempotency_keys where id in (?, ?)`, keys)).map((r) => r.id)).toEqual([expired.id]);
    expect(await sqlState(sys().execute('select response_body from idempotency_keys limit 1'))).toBe('42501');
    expect(await sys().execute(`delete from idempotency_keys where id in (?, ?)`, keys, 'run')).toMatchObject({ affectedRows: 1 });
    expect((await adminRows('idempotency_keys', keys)).map((r) => r.id)).toEqual([live.id]);
    // After the transaction the pooled connection is the application role again.
    const [back] = await tenantEm(orm, A).execute('select current_user as role');
    expect(back!.role).toBe(TEST_APP.user);
  });
});

describe(`the operator role (${OPERATOR_DB_ROLE}), taken on by the operator routes`, () => {
  it('reads every tenant\'s tenant_limits, writes only the tenant in context, and reaches no other table', async () => {
    const [A, B] = [randomUUID(), randomUUID()];
    const [a, b] = [await rows.seed('tenant_limits', A), await rows.seed('tenant_limits', B)];
    const seen = await asApp(randomUUID(), async (c) => (await c.query(`select tenant_id from tenant_limits where tenant_id = any($1::uuid[])`, [[A, B]])).rows, OPERATOR_DB_ROLE);
    expect(seen.map((r) => r.tenant_id).sort()).toEqual([A, B].sort());
    // Bound to A: B's row is neither updated nor deleted.
    expect((await asApp(A, (c) => c.query(`update tenant_limits set updated_by = 'x' where tenant_id = $1`, [B]), OPERATOR_DB_ROLE)).rowCount).toBe(0);
    expect((await asApp(A, (c) => c.query(`delete from tenant_limits where tenant_id = $1`, [B]), OPERATOR_DB_ROLE)).rowCount).toBe(0);
    expect((await adminRows('tenant_limits', [b.tenant_id])).map((r) => r.updated_by)).toEqual([b.updated_by]);
    expect((await adminRows('tenant_limits', [a.tenant_id]))).toHaveLength(1);
    for (const table of tables.filter((t) => t !== 'tenant_limits')) {
      expect(await sqlState(asApp(A, (c) => c.query(`select 1 from "${table}" limit 1`), OPERATOR_DB_ROLE)), table).toBe('42501');
    }
  });
});

/** mulberry32: a reproducible sequence, so a failing interleaving can be replayed. Returns 0..n-1. */
function seededRandom(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * n);
  };
}
