import type { MikroORM } from '../platform/db/orm.ts';
import { FUNCTION_SEARCH_PATH, inspectCatalog, isSurrogateKey, ormCatalogQuery, type CatalogFinding, type CatalogReport } from '../platform/db/catalog.ts';
import { OPERATOR_DB_ROLE, OPERATOR_GRANTS, tenantTables } from '../platform/db/tenant-owned.ts';
import { fail, notRequired, pass, type ReadinessRow } from './readiness.types.ts';

/**
 * autovacuum as PostgreSQL ships it: on. Without it no table ever gets statistics and dead rows are
 * never reclaimed, and a prepared statement's plan made before statistics is kept until the
 * connection prepares the statement again (ADR 0004, "Plans cached before statistics"). Required in
 * production; elsewhere (a test or benchmark server) reported, not failed.
 */
export function autovacuumRow(setting: string | undefined, opts: { production: boolean }): ReadinessRow {
  if (setting === 'on') return pass('postgres-autovacuum', 'autovacuum on');
  const why = `autovacuum ${setting ?? 'unknown'}: tables get no statistics and keep their dead rows, and plans made before statistics last until their connection prepares them again`;
  return opts.production ? fail('postgres-autovacuum', `${why}; turn it on (postgresql.conf or the provider's parameter group)`) : notRequired('postgres-autovacuum', why);
}

/** The server's autovacuum setting, as the application role reads it. */
export async function autovacuumSetting(orm: MikroORM): Promise<string | undefined> {
  const [row] = await orm.em.getConnection().execute<{ setting: string }[]>(`select current_setting('autovacuum') as setting`);
  return row?.setting;
}

/** Findings about keys rather than policies go to the table's `tenant-unique` row. */
const KEY_CHECKS = new Set<CatalogFinding['check']>(['tenant-unique', 'tenant-index', 'tenant-foreign-key', 'tenant-sequence']);

/** The role API and workers really connect as, read from the live connection (not from the URL). */
export async function currentRole(orm: MikroORM): Promise<string> {
  const [row] = await orm.em.getConnection().execute<{ role: string }[]>('select current_user::text as role');
  return row!.role;
}

/**
 * The database rows of the matrix, from the catalog inspection of the live database (src/platform/db/catalog.ts)
 * as the application role: per tenant-owned table `rls <table>` (RLS enabled and forced, an isolation policy
 * with USING and WITH CHECK, no widening policy) and `tenant-unique <table>` (tenant_id in every unique key);
 * then `app-role` (no superuser, no BYPASSRLS, REPLICATION, CREATEROLE or CREATEDB, a member of the system and operator roles
 * only, nothing reachable in another schema (an extension's objects aside), owns nothing, no TEMP, exactly roles.ts's row privileges), the system role, views/functions (a
 * SECURITY DEFINER function it may run fails unless SECURITY_DEFINER_ALLOWED lists it) and `function-search-path` (every function of the schema runs with a search_path of its own, pg_temp last).
 * Errors fail a row; warnings are shown in its reason.
 */
export async function databaseRows(orm: MikroORM, opts: { systemRole?: string } = {}): Promise<ReadinessRow[]> {
  const appRole = await currentRole(orm);
  const report = await inspectCatalog(ormCatalogQuery(orm), { declaredTables: tenantTables(orm), appRole, ...(opts.systemRole ? { systemRole: opts.systemRole } : {}) });
  return catalogRows(report, appRole);
}

export function catalogRows(report: CatalogReport, appRole: string): ReadinessRow[] {
  const rows = new Map<string, { ok: string; findings: CatalogFinding[] }>();
  const row = (component: string, ok: string) => rows.set(component, { ok, findings: [] });
  for (const t of report.tables) row(`rls ${t.table}`, `enabled and forced; policy ${t.isolationPolicy} has USING and WITH CHECK on tenant_id`);
  for (const t of report.tables) {
    const keys = t.uniqueKeys.filter((u) => !isSurrogateKey(u)).length;
    row(`tenant-unique ${t.table}`, keys ? `${keys} unique key(s), all include tenant_id` : 'no unique keys besides the surrogate primary key (id)');
  }
  for (const r of report.roles) {
    if (r.role === appRole) {
      row('app-role', `${appRole}: not superuser, no BYPASSRLS, REPLICATION, CREATEROLE or CREATEDB, a member of no role but the system and operator roles, nothing reachable in a schema but ${report.schema} (an extension's objects aside), owns nothing, no TEMP, no privilege outside RLS, exactly the row privileges db:migrate grants`);
    }
  }
  const other = report.roles.filter((r) => r.role !== appRole);
  if (other[0]) row(`role ${other[0].role}`, `${other[0].role}: NOLOGIN, no BYPASSRLS, owns nothing, reads only its granted columns, deletes only what retention and key expiry delete`);
  const operator = other.find((r) => r.role === OPERATOR_DB_ROLE);
  if (operator) row(`role ${operator.role}`, `${operator.role}: NOLOGIN, no BYPASSRLS, owns nothing, row privileges on ${Object.keys(OPERATOR_GRANTS).join(', ')} only (the operator routes, ADR 0014)`);
  row('views-functions', "no view without security_invoker that the application role reads, no rewrite rule on what it writes, no SECURITY DEFINER function it calls or its writes trigger: nothing runs as the owner on the application role's behalf");
  row('function-search-path', `every function of schema ${report.schema} (trigger functions, SECURITY DEFINER ones, durable_expect) runs with a search_path of its own, pg_temp last (${FUNCTION_SEARCH_PATH})`);
  for (const f of report.findings) {
    const target = componentOf(f, appRole);
    (rows.get(target) ?? rows.set(target, { ok: 'ok', findings: [] }).get(target)!).findings.push(f);
  }
  return [...rows].map(([component, { ok, findings }]) => {
    const errors = findings.filter((f) => f.severity === 'error').map((f) => f.reason);
    const warnings = findings.filter((f) => f.severity === 'warning').map((f) => `warning: ${f.reason}`);
    return errors.length ? fail(component, [...errors, ...warnings].join('; ')) : pass(component, [ok, ...warnings].join('; '));
  });
}

function componentOf(f: CatalogFinding, appRole: string): string {
  if (f.subject.startsWith('table ')) {
    const table = f.subject.slice('table '.length);
    return KEY_CHECKS.has(f.check) ? `tenant-unique ${table}` : `rls ${table}`;
  }
  // A sequence the application may use is a privilege of its own, as a table without tenant_id is.
  if (f.subject === `role ${appRole}` || f.subject.startsWith('sequence ')) return 'app-role';
  if (f.subject.startsWith('role ')) return f.subject;
  if (f.check === 'function-search-path') return 'function-search-path';
  return 'views-functions';
}
