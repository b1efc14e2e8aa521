import type { EntityManager } from '@mikro-orm/postgresql';
import { ReferenceKind, type EntityName, type EntityProperty, type RequiredEntityData } from '@mikro-orm/core';

interface EntityPlan {
  table: string;
  columns: Map<string, EntityProperty>;
  /** Statements by the row's keys (in the order given): `insert into "t" ("a", "b") values (?, ?)`. */
  statements: Map<string, string>;
}

const plans = new WeakMap<object, EntityPlan>();

function planFor(em: EntityManager, entity: EntityName<object>): EntityPlan {
  const meta = em.getMetadata().get(entity);
  let plan = plans.get(meta);
  if (!plan) {
    const scalar = meta.props.filter((p) => p.persist !== false && p.kind === ReferenceKind.SCALAR && p.fieldNames?.length === 1);
    plan = { table: meta.tableName, columns: new Map(scalar.map((p) => [p.name as string, p])), statements: new Map() };
    plans.set(meta, plan);
  }
  return plan;
}

/**
 * Inserts one row of an entity as `em.insert` does — the same table, columns and value conversions,
 * all taken from the entity's MikroORM metadata and types — through a statement built once per entity
 * and set of columns. `em.insert` builds a query builder per call: measured, about 350 µs of CPU per
 * insert on the benchmark machine against about 40 µs here (docs/performance-history.md). For the append-only
 * rows a step writes and never reads back: no identity-map entry, no unit of work, no RETURNING.
 * Inside a step the insert is held and travels with the step's checkpoint and commit, as every plain
 * insert there does (coalescing-client.ts, ADR 0004). Only the entity's own scalar columns; a key that
 * is not one is refused.
 */
export async function insertRow<T extends object>(em: EntityManager, entity: EntityName<T>, data: RequiredEntityData<T>): Promise<void> {
  const plan = planFor(em, entity as EntityName<object>);
  const platform = em.getPlatform();
  const row = data as Record<string, unknown>;
  const keys = Object.keys(row).filter((k) => row[k] !== undefined);
  const signature = keys.join(',');
  let sql = plan.statements.get(signature);
  const props = keys.map((k) => {
    const prop = plan.columns.get(k);
    if (!prop) throw new TypeError(`insertRow: ${k} is not a column of ${plan.table}`);
    return prop;
  });
  if (!sql) {
    sql = `insert into ${platform.quoteIdentifier(plan.table)} (${props.map((p) => platform.quoteIdentifier(p.fieldNames[0]!)).join(', ')}) values (${props.map(() => '?').join(', ')})`;
    plan.statements.set(signature, sql);
  }
  const values = props.map((p) => (p.customType ? p.customType.convertToDatabaseValue(row[p.name], platform, { mode: 'query' }) : row[p.name]));
  await em.execute(sql, values, 'run');
}
