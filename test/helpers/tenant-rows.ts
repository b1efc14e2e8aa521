import { randomBytes, randomInt, randomUUID } from 'node:crypto';
import type pg from 'pg';
import type { EntityMetadata } from '@mikro-orm/core';

/**
 * Builds a valid row for any tenant-owned table from the live schema: every NOT NULL column without a
 * default gets a value of its type (enum columns one of the entity's `items`), and foreign keys point at
 * a parent row of the same tenant, seeded on demand. So the RLS suite needs no per-table fixture and
 * covers tables added later. Rows are seeded as the superuser (seeding only; isolation is always
 * asserted as the application role).
 */

export type Row = Record<string, unknown>;

interface ColumnSpec {
  name: string;
  udt: string;
  maxLength: number | null;
  required: boolean;
}

interface ForeignKeySpec {
  columns: string[];
  refTable: string;
  refColumns: string[];
}

export interface TableSpec {
  table: string;
  meta: EntityMetadata;
  /**
   * The column that names one row: the primary key's, or where that key is composite (the rows a step
   * writes once per run, keyed by tenant and run), the row's `id`, a fresh uuid in every row built here.
   */
  pk: string;
  /** The property of `pk`. */
  pkProp: string;
  columns: ColumnSpec[];
  foreignKeys: ForeignKeySpec[];
}

const COLUMNS_SQL = `
  select a.attname as name, t.typname as udt,
         case when t.typname in ('varchar', 'bpchar') and a.atttypmod > 4 then a.atttypmod - 4 end as max_length,
         a.attnotnull and not a.atthasdef and a.attidentity = '' as required
    from pg_attribute a
    join pg_class c on c.oid = a.attrelid
    join pg_namespace n on n.oid = c.relnamespace
    join pg_type t on t.oid = a.atttypid
   where n.nspname = 'public' and c.relname = $1 and a.attnum > 0 and not a.attisdropped and a.attgenerated = ''
   order by a.attnum`;

const FOREIGN_KEYS_SQL = `
  select f.relname as ref_table,
         array(select a.attname::text from unnest(con.conkey) with ordinality k(n, o)
                 join pg_attribute a on a.attrelid = con.conrelid and a.attnum = k.n order by k.o) as columns,
         array(select a.attname::text from unnest(con.confkey) with ordinality k(n, o)
                 join pg_attribute a on a.attrelid = con.confrelid and a.attnum = k.n order by k.o) as ref_columns
    from pg_constraint con join pg_class c on c.oid = con.conrelid join pg_class f on f.oid = con.confrelid
   where con.contype = 'f' and c.relname = $1`;

export class TenantRows {
  readonly specs = new Map<string, TableSpec>();
  private readonly admin: pg.Client;
  /** One parent row per (table, tenant), created on first use. */
  private readonly parents = new Map<string, Promise<Row>>();

  constructor(admin: pg.Client) {
    this.admin = admin;
  }

  /** Reads the schema of each entity's table (and, through foreign keys, of the tables they reference). */
  async load(metas: EntityMetadata[]): Promise<this> {
    for (const meta of metas) {
      const columns = (await this.admin.query(COLUMNS_SQL, [meta.tableName])).rows.map((r) => ({ name: r.name, udt: r.udt, maxLength: r.max_length, required: r.required }));
      if (columns.length === 0) throw new Error(`table ${meta.tableName} of entity ${meta.className} does not exist`);
      const foreignKeys = (await this.admin.query(FOREIGN_KEYS_SQL, [meta.tableName])).rows.map((r) => ({ columns: r.columns, refTable: r.ref_table, refColumns: r.ref_columns }));
      const primary = meta.getPrimaryProps();
      const naming = primary.length === 1 ? primary[0]! : meta.properties.id;
      if (!naming) throw new Error(`entity ${meta.className} has a composite primary key and no id column to name a row by`);
      this.specs.set(meta.tableName, { table: meta.tableName, meta, pk: naming.fieldNames[0]!, pkProp: naming.name as string, columns, foreignKeys });
    }
    return this;
  }

  spec(table: string): TableSpec {
    const s = this.specs.get(table);
    if (!s) throw new Error(`no entity metadata loaded for table ${table}`);
    return s;
  }

  /** A fresh row for `tenant` (not inserted); parents it references are seeded for the same tenant. */
  async build(table: string, tenant: string): Promise<Row> {
    if (table === 'approval_policy_versions') return this.nextPolicyVersion(tenant);
    const spec = this.spec(table);
    const row: Row = {};
    // References a trigger checks rather than a foreign key: a parent of its own per row (each may be unique per parent).
    for (const ref of CHECKED_REFERENCES[table] ?? []) row[ref.column] = (await this.seed(ref.refTable, tenant))[ref.refColumn];
    for (const fk of spec.foreignKeys) {
      const needed = fk.columns.some((c) => spec.columns.find((col) => col.name === c)?.required);
      if (!needed) continue;
      const parent = await this.parent(fk.refTable, tenant);
      fk.columns.forEach((c, i) => (row[c] = parent[fk.refColumns[i]!]));
    }
    for (const col of spec.columns) {
      if (col.name in row || !(col.required || col.name === 'tenant_id' || CHECK_FILLED[table]?.includes(col.name))) continue;
      row[col.name] = col.name === 'tenant_id' ? tenant : valueFor(spec, col);
    }
    // A first policy the application role may insert: version 1, no bound above the defaults' (a loosening needs an
    // approved change: the trigger versions_in_order, ADR 0010), whatever random values gave.
    // A checkpoint as a failed step records it, anywhere in its run: the others the application role may write
    // only within their run's steps, after the one before completed (stepOrderTriggers), which this row is not.
    if (table === 'durable_checkpoints') row.status = 'failed';
    if (table === 'approval_policies') Object.assign(row, { version: 1, currency: 'SAR', class_amax_cost: 1, class_amax_payback_months: 1, class_cmin_cost: 2, class_cmin_payback_months: 2 });
    // A row its run's step writes commits only with that step's checkpoint naming it (committedWithItsStep):
    // the checkpoint is seeded with the row, on the row's own run, so the application role may insert the row.
    const step = STEP_CHECKPOINTS[table];
    if (step) {
      await this.admin.query(
        `insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, output, attempt, created_at, updated_at, completed_at)
         values ($1, $2, $3, $4, $5, 'completed', $6::jsonb, 1, now(), now(), now())`,
        [randomUUID(), tenant, row.run_id, step.seq, step.name, JSON.stringify(step.output(row))],
      );
    }
    return row;
  }

  /** Builds and inserts a row as the superuser. */
  async seed(table: string, tenant: string): Promise<Row> {
    const row = await this.build(table, tenant);
    const { text, values } = insertSql(table, row);
    await this.admin.query(text, values);
    return row;
  }

  /**
   * The row keyed by the entity's property names, for `em.insert`. A relation keyed by several columns
   * (a composite foreign key that shares tenant_id with the tenantId property) gets its columns' values
   * as one composite value, in the order of its join columns.
   */
  toEntityData(table: string, row: Row): Record<string, unknown> {
    const { meta } = this.spec(table);
    const byColumn = new Map(meta.props.filter((p) => p.fieldNames?.length === 1).map((p) => [p.fieldNames[0]!, p.name as string]));
    const composite = meta.props.filter((p) => (p.fieldNames?.length ?? 0) > 1);
    const owned = new Map(composite.flatMap((p) => p.fieldNames.filter((f) => !byColumn.has(f)).map((f) => [f, p] as const)));
    const data: Record<string, unknown> = {};
    for (const [col, v] of Object.entries(row)) {
      const relation = owned.get(col);
      if (relation) data[relation.name as string] = relation.fieldNames.map((f) => row[f]);
      else if (byColumn.has(col)) data[byColumn.get(col)!] = v;
      else throw new Error(`column ${table}.${col} has no property in entity ${meta.className}`);
    }
    return data;
  }

  /**
   * A history row takes only the tenant's policy as its transaction commits it (POLICY_VERSION_GUARD):
   * the tenant's policy moves to a version of its own (its row seeded first if it has none), whose copy
   * is the row, and the copy the policy's trigger recorded is removed, so the row's insert is the one
   * that records it. Until the tenant's next one is built, the row is its policy as it commits.
   */
  private async nextPolicyVersion(tenant: string): Promise<Row> {
    const bumped = await this.admin.query(`update approval_policies set version = version + 1 where tenant_id = $1 returning version`, [tenant]);
    if (bumped.rowCount === 0) await this.seed('approval_policies', tenant);
    const [row] = (await this.admin.query(`delete from approval_policy_versions h using approval_policies p
       where p.tenant_id = $1 and h.tenant_id = p.tenant_id and h.version = p.version returning h.*`, [tenant])).rows;
    if (!row) throw new Error(`approval policy of tenant ${tenant}: its version was not recorded`);
    return { ...row, id: randomUUID() };
  }

  private parent(table: string, tenant: string): Promise<Row> {
    const key = `${table}:${tenant}`;
    let p = this.parents.get(key);
    if (!p) {
      p = this.seed(table, tenant);
      this.parents.set(key, p);
    }
    return p;
  }
}

/**
 * Columns that name a row of another table without a foreign key, checked by a trigger at insert:
 * an evidence pack's run (the seal trigger refuses a pack naming no run of its tenant; not a foreign
 * key, since run retention deletes runs and keeps their packs — ADR 0011), and an approval request's
 * (its step's checkpoint, which names it, is one of that run's).
 */
const CHECKED_REFERENCES: Record<string, Array<{ column: string; refTable: string; refColumn: string }>> = {
  evidence_packs: [{ column: 'run_id', refTable: 'durable_runs', refColumn: 'id' }],
  // Its run's approval step's checkpoint names it (STEP_CHECKPOINTS): a run of its own.
  approval_requests: [{ column: 'run_id', refTable: 'durable_runs', refColumn: 'id' }],
};

/**
 * The rows a run's step writes, held at their commit to that step's checkpoint naming them (committedWithItsStep,
 * durable-checkpoint.entity.ts): the checkpoint build seeds with each such row, its output naming the row.
 */
const STEP_CHECKPOINTS: Record<string, { seq: number; name: string; output: (row: Row) => Record<string, unknown> }> = {
  approval_requests: {
    seq: 3,
    name: 'approval-packet',
    output: (row) => ({ approval_request_id: row.id, approval_class: row.approval_class, required_approvals: row.required_approvals }),
  },
  evidence_packs: { seq: 4, name: 'evidence-pack', output: (row) => ({ evidence_pack_id: row.id, sha256: row.sha256 }) },
};

/**
 * Nullable columns a check constraint needs filled in a valid row: a token revocation is a `jti` or a
 * `not_before`, exactly one (token_revocations_one_kind, ADR 0018).
 */
const CHECK_FILLED: Record<string, string[]> = {
  token_revocations: ['jti'],
};

export function insertSql(table: string, row: Row): { text: string; values: unknown[] } {
  const cols = Object.keys(row);
  return {
    text: `insert into "${table}" (${cols.map((c) => `"${c}"`).join(', ')}) values (${cols.map((_, i) => `$${i + 1}`).join(', ')})`,
    values: Object.values(row),
  };
}

function valueFor(spec: TableSpec, col: ColumnSpec): unknown {
  const items = spec.meta.props.find((p) => p.fieldNames?.[0] === col.name)?.items;
  if (items?.length) return items[0];
  switch (col.udt) {
    case 'uuid':
      return randomUUID();
    case 'text':
    case 'varchar':
    case 'bpchar':
      return randomBytes(16).toString('hex').slice(0, col.maxLength ?? 32);
    case 'int2':
      return randomInt(1, 32_000);
    case 'int4':
    case 'int8':
      return randomInt(1, 2_000_000_000);
    case 'float4':
    case 'float8':
    case 'numeric':
      return randomInt(1, 1_000_000) / 100;
    case 'json':
    case 'jsonb':
      return {};
    case 'timestamptz':
    case 'timestamp':
      return new Date();
    case 'date':
      return '2026-01-01';
    case 'bool':
      return false;
    case '_text':
      return [randomBytes(8).toString('hex')];
    default:
      throw new Error(`cannot build a value for ${spec.table}.${col.name} of type ${col.udt}: teach test/helpers/tenant-rows.ts this type`);
  }
}
