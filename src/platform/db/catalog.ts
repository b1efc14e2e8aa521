import type { MikroORM } from './orm.ts';
import { APP_UNTENANTED_GRANTS, OPERATOR_DB_ROLE, OPERATOR_GRANTS, SYSTEM_READS, SYSTEM_ROLE, TENANT_PREDICATE_SQL, TENANT_SETTING, tenantTables } from './tenant-owned.ts';
import { CATALOG_SQL } from './catalog.queries.ts';
import { appTableGrant, systemTableGrant, type TableGrant } from './roles.ts';

/**
 * A read-only inspection of the live database against the tenancy invariants (ADR 0001): every
 * tenant-owned table has RLS enabled and forced, one isolation policy for ALL commands whose USING
 * and WITH CHECK are both exactly the canonical predicate on `tenant_id` and `app.tenant_id`, no other policy that widens what the application sees,
 * `tenant_id` indexed and part of every unique key; the application role is no superuser, has no
 * BYPASSRLS, REPLICATION, CREATEROLE nor CREATEDB, is a member of the system and operator roles and of nothing
 * else (PostgreSQL's built-in roles included), may create in no schema but the one inspected nor reach anything elsewhere but an extension's objects, owns nothing, may
 * create nothing (TEMP included), holds no privilege that RLS does not govern
 * (TRUNCATE, REFERENCES, TRIGGER, and any row privilege on a table without tenant_id beyond
 * APP_UNTENANTED_GRANTS), and holds on the tenant tables exactly the row privileges roles.ts grants it (none
 * more, none fewer), as the system role does its own (SYSTEM_READS' columns, SYSTEM_DELETES); nothing runs
 * with the owner's rights on the application's behalf (a view without security_invoker, a rewrite rule, a
 * SECURITY DEFINER function it calls or its writes trigger, bar SECURITY_DEFINER_ALLOWED). Used by the RLS
 * suite and by the release readiness matrix; it only runs SELECTs.
 */

export type CatalogQuery = (sql: string, params: readonly unknown[]) => Promise<Record<string, any>[]>;

export type CatalogCheck =
  | 'table-present'
  | 'rls-enabled'
  | 'rls-forced'
  | 'tenant-policy'
  | 'policy-canonical'
  | 'extra-policy'
  | 'tenant-unique'
  | 'tenant-index'
  | 'tenant-foreign-key'
  | 'tenant-sequence'
  | 'view-security-invoker'
  | 'rewrite-rule'
  | 'role-exists'
  | 'role-reads'
  | 'role-grants'
  | 'role-superuser'
  | 'role-bypassrls'
  | 'role-login'
  | 'role-owns'
  | 'role-privilege'
  | 'role-untenanted'
  | 'role-create'
  | 'role-temp'
  | 'role-inherits'
  | 'role-member'
  | 'role-replication'
  | 'role-createrole'
  | 'role-createdb'
  | 'role-schema'
  | 'security-definer'
  | 'function-search-path';

export interface CatalogFinding {
  check: CatalogCheck;
  /** `error` breaks an invariant; `warning` is a weakness worth a look (the readiness matrix shows both). */
  severity: 'error' | 'warning';
  /** The table or role concerned, e.g. `table durable_runs` or `role dealix_app`. */
  subject: string;
  reason: string;
}

export interface PolicyInfo {
  name: string;
  permissive: boolean;
  roles: string[];
  command: 'ALL' | 'SELECT' | 'INSERT' | 'UPDATE' | 'DELETE';
  using: string | null;
  check: string | null;
}

export interface UniqueKeyInfo {
  name: string;
  columns: string[];
  primary: boolean;
  includesTenant: boolean;
}

/**
 * A surrogate primary key (random UUIDs, `id` alone) reveals nothing, so it need not include tenant_id; every
 * other unique key must, a primary key on natural columns too (the step rows keyed by (tenant_id, run_id),
 * docs/performance-history.md, session 24): a unique check ignores RLS, whichever constraint makes it.
 */
export const isSurrogateKey = (u: UniqueKeyInfo): boolean => u.primary && u.columns.length === 1 && u.columns[0] === 'id';

export interface TableReport {
  table: string;
  /** Declared tenant-owned by the ORM metadata (isTenantOwned). */
  declared: boolean;
  exists: boolean;
  hasTenantColumn: boolean;
  rlsEnabled: boolean;
  rlsForced: boolean;
  policies: PolicyInfo[];
  /** Name of the policy that isolates tenants for ALL commands with both clauses, if any. */
  isolationPolicy: string | undefined;
  uniqueKeys: UniqueKeyInfo[];
  tenantIndexed: boolean;
}

export interface RoleReport {
  role: string;
  exists: boolean;
  superuser: boolean;
  bypassRls: boolean;
  canLogin: boolean;
  inherit: boolean;
  /** REPLICATION: it may open replication connections (every row of the cluster, streamed) and create replication slots. */
  replication: boolean;
  createRole: boolean;
  createDb: boolean;
  /**
   * Schemas besides the one inspected that it may create in, or use to reach a relation or function not an
   * extension's (CATALOG_SQL.otherSchemas): `reports (view reports.runs)`, `scratch (CREATE)`.
   */
  otherSchemas: string[];
  /** Relations (and schemas, the database) this role owns. */
  owns: string[];
  /** `<table>: <PRIVILEGE>` for each TRUNCATE, REFERENCES or TRIGGER privilege held (any row privilege beyond OPERATOR_GRANTS for the operator role; row privileges on tenant tables are compared with roles.ts apart). */
  unsafePrivileges: string[];
  /**
   * `<table>: <PRIVILEGE>` for each SELECT, INSERT, UPDATE or DELETE held on a table without tenant_id
   * (which row-level security cannot scope), beyond what APP_UNTENANTED_GRANTS allows the application role
   * (the system role, and a role the application can become, may hold none).
   */
  untenantedPrivileges: string[];
  /** Where the role may create objects it would then own: `schema public`, `database <name>`. */
  canCreateIn: string[];
  /** The database in which the role may create temporary tables (TEMP, directly or through PUBLIC), if it may. */
  tempIn: string | undefined;
  /** Roles this role can become with SET ROLE (PostgreSQL 15: every role it is a member of). */
  memberOf: string[];
  /** Roles whose privileges (and policies) this role holds without SET ROLE (pg_has_role … USAGE: INHERIT, per grant since PostgreSQL 16). */
  inheritsFrom: string[];
}

export interface CatalogReport {
  schema: string;
  tables: TableReport[];
  roles: RoleReport[];
  findings: CatalogFinding[];
  /** The findings of severity `error`; empty when every invariant holds. */
  failures: CatalogFinding[];
  ok: boolean;
}

export interface CatalogOptions {
  /** Tenant-owned tables declared by the ORM (see `tenantTables`); every table with a tenant_id column is added. */
  declaredTables: string[];
  /** The role API and workers log in as (DATABASE_URL). */
  appRole: string;
  /** The NOLOGIN maintenance role; it may hold SELECT/DELETE-only policies of its own (ADR 0001). */
  systemRole?: string;
  /** The NOLOGIN role of the operator routes (ADR 0014): row privileges only as OPERATOR_GRANTS lists, SELECT-only policies of its own there. */
  operatorRole?: string;
  schema?: string;
}

const UNSAFE_PRIVILEGES = ['TRUNCATE', 'REFERENCES', 'TRIGGER'];
const SYSTEM_COMMANDS = new Set(['SELECT', 'DELETE']);
const ROW_PRIVILEGES = ['SELECT', 'INSERT', 'UPDATE', 'DELETE'] as const;

/** Inspects the database behind `query` and reports every broken invariant, naming the table or role. */
export async function inspectCatalog(query: CatalogQuery, opts: CatalogOptions): Promise<CatalogReport> {
  const schema = opts.schema ?? 'public';
  const systemRole = opts.systemRole ?? SYSTEM_ROLE;
  const operatorRole = opts.operatorRole ?? OPERATOR_DB_ROLE;
  const findings: CatalogFinding[] = [];
  const tables = await inspectTables(query, schema, opts.declaredTables);
  const scope = new Set(tables.filter((t) => t.exists && t.hasTenantColumn).map((t) => t.table));
  for (const t of tables) findings.push(...checkTable(t, opts.appRole, systemRole, operatorRole));
  findings.push(...(await checkForeignKeys(query, schema, scope)));
  findings.push(...(await checkSequences(query, schema, scope, opts.appRole)));
  const roles: RoleReport[] = [];
  const unsafeFor = { app: UNSAFE_PRIVILEGES, system: UNSAFE_PRIVILEGES, operator: [...UNSAFE_PRIVILEGES, ...ROW_PRIVILEGES] };
  // What roles.ts grants each role on a table (undefined: a table whose row privileges another check judges).
  const declared = new Set(opts.declaredTables);
  const appGrant = (table: string, tenanted: boolean): TableGrant | undefined => (tenanted ? (declared.has(table) ? appTableGrant(table) : {}) : table in APP_UNTENANTED_GRANTS ? appTableGrant(table) : undefined);
  const systemGrant = (table: string, tenanted: boolean): TableGrant | undefined => (tenanted || table in SYSTEM_READS ? systemTableGrant(table) : undefined);
  for (const [role, kind] of [[opts.appRole, 'app'], [systemRole, 'system'], [operatorRole, 'operator']] as const) {
    const report = await inspectRole(query, schema, role, unsafeFor[kind], kind === 'app' ? APP_UNTENANTED_GRANTS : {});
    // The operator role's row privileges are unsafe but where OPERATOR_GRANTS lists them.
    if (kind === 'operator') report.unsafePrivileges = report.unsafePrivileges.filter((p) => !isOperatorGrant(p));
    roles.push(report);
    // ADR 0001 §2: the application role is a member of the system and operator roles and of nothing else; they of nothing.
    findings.push(...checkRole(report, kind, undefined, kind === 'app' ? [systemRole, operatorRole] : []));
    if (kind === 'app' && report.exists) findings.push(...checkGrants(await columnPrivileges(query, schema, role, Object.keys(APP_UNTENANTED_GRANTS)), appGrant, { role, kind }));
    if (kind === 'system' && report.exists) findings.push(...checkGrants(await columnPrivileges(query, schema, role, Object.keys(SYSTEM_READS)), systemGrant, { role, kind }));
    for (const reachable of report.memberOf) {
      if ((reachable === systemRole || reachable === operatorRole) && kind === 'app') continue; // checked in its own right
      const r = await inspectRole(query, schema, reachable, UNSAFE_PRIVILEGES);
      roles.push(r);
      const grants = kind === 'app' && r.exists ? checkGrants(await columnPrivileges(query, schema, reachable, []), appGrant, { role: reachable, kind: 'reachable', via: role }) : [];
      const via = [...checkRole(r, 'reachable', role), ...grants];
      findings.push(...via.map((f) => ({ ...f, reason: `${role} can SET ROLE ${reachable}, which ${f.reason}` })));
    }
  }
  if (roles[0]!.exists) {
    findings.push(...(await checkViews(query, schema, opts.appRole)));
    findings.push(...(await checkRules(query, schema, opts.appRole)));
    findings.push(...(await checkSecurityDefiners(query, schema, opts.appRole)));
  }
  findings.push(...(await functionSearchPathFindings(query, schema)));
  const failures = findings.filter((f) => f.severity === 'error');
  return { schema, tables, roles, findings, failures, ok: failures.length === 0 };
}

/** Convenience for the tests and the readiness matrix: declared tables from the ORM, queries through its connection. */
export async function inspectOrmCatalog(orm: MikroORM, opts: { appRole: string; systemRole?: string }): Promise<CatalogReport> {
  return inspectCatalog(ormCatalogQuery(orm), { declaredTables: tenantTables(orm), ...opts });
}

/** Adapts a node-postgres client or pool. */
export function pgCatalogQuery(client: { query(sql: string, params?: any[]): Promise<{ rows: any[] }> }): CatalogQuery {
  return async (sql, params) => (await client.query(sql, [...params])).rows;
}

/** Adapts a MikroORM connection (which binds `?` placeholders, in order). */
export function ormCatalogQuery(orm: MikroORM): CatalogQuery {
  return async (sql, params) => {
    const ordered: unknown[] = [];
    const text = sql.replace(/\$(\d+)/g, (_, n: string) => {
      ordered.push(params[Number(n) - 1]);
      return '?';
    });
    return orm.em.getConnection().execute(text, ordered, 'all');
  };
}

/** One line per finding, for logs and assertion messages. */
export function formatFindings(findings: readonly CatalogFinding[]): string {
  return findings.map((f) => `[${f.severity}] ${f.check} ${f.subject}: ${f.reason}`).join('\n');
}

async function inspectTables(query: CatalogQuery, schema: string, declared: string[]): Promise<TableReport[]> {
  // Sequential on purpose: a single pg.Client must not run queries concurrently.
  const rels = await query(CATALOG_SQL.tables, [schema]);
  const policies = await query(CATALOG_SQL.policies, [schema]);
  const indexes = await query(CATALOG_SQL.indexes, [schema]);
  const declaredSet = new Set(declared);
  const names = new Set([...declared, ...rels.filter((r) => r.has_tenant_id).map((r) => r.table as string)]);
  return [...names].sort().map((table) => {
    const rel = rels.find((r) => r.table === table);
    const own = indexes.filter((i) => i.table === table);
    const tablePolicies: PolicyInfo[] = policies
      .filter((p) => p.table === table)
      .map((p) => ({ name: p.name, permissive: p.permissive === 'PERMISSIVE', roles: p.roles, command: p.cmd, using: p.qual, check: p.with_check }));
    return {
      table,
      declared: declaredSet.has(table),
      exists: Boolean(rel),
      hasTenantColumn: Boolean(rel?.has_tenant_id),
      rlsEnabled: Boolean(rel?.rls_enabled),
      rlsForced: Boolean(rel?.rls_forced),
      policies: tablePolicies,
      isolationPolicy: (tablePolicies.find((p) => isIsolationPolicy(p) && isTenantScoped(p)) ?? tablePolicies.find(isIsolationPolicy))?.name,
      uniqueKeys: own
        .filter((i) => i.unique)
        .map((i) => ({ name: i.constraint ?? i.index, columns: i.columns, primary: i.primary, includesTenant: i.columns.includes('tenant_id') })),
      tenantIndexed: own.some((i) => i.columns[0] === 'tenant_id' && !i.partial && i.valid),
    };
  });
}

const refsTenant = (expr: string | null) => Boolean(expr && /\btenant_id\b/.test(expr) && expr.includes(`current_setting('${TENANT_SETTING}'`));

function isIsolationPolicy(p: PolicyInfo): boolean {
  return p.permissive && p.command === 'ALL' && refsTenant(p.using) && refsTenant(p.check);
}

/** A further policy that admits exactly the tenant's rows (e.g. a SELECT-only copy) adds nothing to what the tenant sees. */
function isTenantScoped(p: PolicyInfo): boolean {
  return (p.using === null || p.using === TENANT_PREDICATE_SQL) && (p.check === null || p.check === TENANT_PREDICATE_SQL) && (p.using ?? p.check) !== null;
}

/** The maintenance role's own read/delete policies (ADR 0001): named for that role alone, never INSERT or UPDATE. */
function isSystemPolicy(p: PolicyInfo, systemRole: string): boolean {
  return p.roles.length === 1 && p.roles[0] === systemRole && SYSTEM_COMMANDS.has(p.command);
}

/** The operator role's own read policy (ADR 0014): named for that role alone, SELECT, on a table it is granted. */
function isOperatorPolicy(p: PolicyInfo, table: string, operatorRole: string): boolean {
  return p.roles.length === 1 && p.roles[0] === operatorRole && p.command === 'SELECT' && table in OPERATOR_GRANTS;
}

/** `<table>: <PRIVILEGE>` as inspectRole reports it, and listed in OPERATOR_GRANTS. */
function isOperatorGrant(privilege: string): boolean {
  const [table, what] = privilege.split(': ');
  return Boolean(table && what && OPERATOR_GRANTS[table]?.includes(what));
}

function appliesTo(p: PolicyInfo, role: string): boolean {
  return p.roles.includes('public') || p.roles.includes(role);
}

function checkTable(t: TableReport, appRole: string, systemRole: string, operatorRole: string): CatalogFinding[] {
  const subject = `table ${t.table}`;
  const out: CatalogFinding[] = [];
  const fail = (check: CatalogCheck, reason: string, severity: CatalogFinding['severity'] = 'error') => out.push({ check, severity, subject, reason });
  if (!t.exists) {
    fail('table-present', `${t.table} is declared tenant-owned by the ORM but does not exist in the database (pending migration?)`);
    return out;
  }
  if (!t.hasTenantColumn) fail('table-present', `${t.table} is declared tenant-owned but has no tenant_id column`);
  if (!t.rlsEnabled) fail('rls-enabled', `row-level security is not enabled on ${t.table}: every role with privileges sees every tenant's rows`);
  if (!t.rlsForced) fail('rls-forced', `row-level security is not forced on ${t.table}: its owner (migrations, owner-owned views and functions) bypasses the policies`);
  if (!t.isolationPolicy) {
    fail('tenant-policy', `${t.table} has no permissive policy for ALL commands whose USING and WITH CHECK both compare tenant_id with current_setting('${TENANT_SETTING}')${describePolicies(t.policies)}`);
  } else {
    const iso = t.policies.find((p) => p.name === t.isolationPolicy)!;
    if (!appliesTo(iso, appRole)) fail('tenant-policy', `the isolation policy ${iso.name} on ${t.table} does not apply to ${appRole} (roles: ${iso.roles.join(', ')})`);
    // Anything but the predicate the migrations write (tenantIsolationPolicy) may admit other tenants'
    // rows while naming tenant_id and app.tenant_id (`… OR tenant_id <> x`): an error, not a style note.
    if (iso.using !== TENANT_PREDICATE_SQL || iso.check !== TENANT_PREDICATE_SQL) {
      fail('policy-canonical', `the isolation policy ${iso.name} on ${t.table} is not the canonical predicate ${TENANT_PREDICATE_SQL} (USING ${iso.using ?? '-'}, WITH CHECK ${iso.check ?? '-'}): anything else may admit other tenants' rows; recreate it as tenantIsolationPolicy() writes it`);
    }
  }
  for (const p of t.policies) {
    if (p.name === t.isolationPolicy || !p.permissive) continue; // restrictive policies can only narrow access
    if (isTenantScoped(p) || isSystemPolicy(p, systemRole) || isOperatorPolicy(p, t.table, operatorRole)) continue;
    fail('extra-policy', `policy ${p.name} on ${t.table} (${p.command} to ${p.roles.join(', ')}, USING ${p.using ?? '-'}, WITH CHECK ${p.check ?? '-'}) widens access beyond the tenant; only SELECT/DELETE policies for ${systemRole} (and SELECT policies for ${operatorRole} on its own tables) are allowed besides the isolation policy`);
  }
  for (const u of t.uniqueKeys) {
    if (!isSurrogateKey(u) && !u.includesTenant) fail('tenant-unique', `unique key ${u.name} on ${t.table} (${u.columns.join(', ')}) does not include tenant_id: it tells one tenant which values another has used`);
  }
  if (t.hasTenantColumn && !t.tenantIndexed) fail('tenant-index', `tenant_id on ${t.table} is not the leading column of any complete index: every policy check becomes a sequential scan`);
  return out;
}

function describePolicies(policies: PolicyInfo[]): string {
  if (policies.length === 0) return ' (it has no policies at all)';
  return ` (policies: ${policies.map((p) => `${p.name} ${p.command} USING ${p.using ?? '-'} WITH CHECK ${p.check ?? '-'}`).join('; ')})`;
}

async function checkForeignKeys(query: CatalogQuery, schema: string, scope: Set<string>): Promise<CatalogFinding[]> {
  const fks = await query(CATALOG_SQL.foreignKeys, [schema]);
  const out: CatalogFinding[] = [];
  for (const fk of fks) {
    if (!scope.has(fk.table) || !scope.has(fk.ref_table)) continue;
    const i = (fk.columns as string[]).indexOf('tenant_id');
    if (i >= 0 && fk.ref_columns[i] === 'tenant_id') continue;
    out.push({
      check: 'tenant-foreign-key',
      severity: 'warning',
      subject: `table ${fk.table}`,
      reason: `foreign key ${fk.name} on ${fk.table} (${fk.columns.join(', ')}) references ${fk.ref_table} (${fk.ref_columns.join(', ')}) without tenant_id: referential checks bypass RLS, so a row can point at another tenant's row and probe its existence`,
    });
  }
  return out;
}

async function checkViews(query: CatalogQuery, schema: string, appRole: string): Promise<CatalogFinding[]> {
  const views = await query(CATALOG_SQL.views, [schema, appRole]);
  return views
    .filter((v) => !v.security_invoker && v.readable)
    .map((v) => ({
      check: 'view-security-invoker' as const,
      severity: 'error' as const,
      subject: `view ${v.name}`,
      reason: `view ${v.name} is readable by ${appRole} and runs with its owner's rights (no security_invoker): it can bypass row-level security`,
    }));
}

/**
 * A sequence is one counter for every tenant, and row-level security does not apply to it: a tenant
 * reading the values its own rows drew (an identity or serial column) learns how many rows the others
 * inserted between them. Tenant-owned rows take random UUIDs; the application may use no sequence.
 */
async function checkSequences(query: CatalogQuery, schema: string, scope: Set<string>, appRole: string): Promise<CatalogFinding[]> {
  const rows = await query(CATALOG_SQL.sequences, [schema, appRole]);
  const why = 'a sequence every tenant shares: its values tell a tenant how many rows the others inserted (use gen_random_uuid())';
  return rows.flatMap((r): CatalogFinding[] => {
    if (r.sequence) return [{ check: 'tenant-sequence', severity: 'error', subject: `sequence ${r.sequence}`, reason: `${appRole} may use sequence ${r.sequence}, ${why}` }];
    if (!scope.has(r.table)) return [];
    return [{ check: 'tenant-sequence', severity: 'error', subject: `table ${r.table}`, reason: `column ${r.table}.${r.column} draws from ${why}` }];
  });
}

/**
 * A rewrite rule runs its actions with its relation owner's rights: the owner is bound by the isolation
 * policies too (FORCE), but reads every tenant's runs through the system role's policies, and holds
 * every privilege the application role lacks. Unlike a view, a rule cannot be made invoker: none may
 * fire on the application's writes.
 */
async function checkRules(query: CatalogQuery, schema: string, appRole: string): Promise<CatalogFinding[]> {
  const rules = await query(CATALOG_SQL.rules, [schema, appRole]);
  return rules.map((r) => ({
    check: 'rewrite-rule' as const,
    severity: 'error' as const,
    subject: `rule ${r.rule} on ${r.table}`,
    reason: `rule ${r.rule} on ${r.table}, which ${appRole} may write, runs its actions with the rights of the table's owner: it can bypass row-level security`,
  }));
}

/**
 * SECURITY DEFINER functions the application role may run (`name(argument types)`, as regprocedure prints it),
 * reviewed for cross-tenant access. None: every function of the schema is SECURITY INVOKER (the trigger
 * functions, durable_expect). A function added here needs a review of what its owner reads.
 */
export const SECURITY_DEFINER_ALLOWED: readonly string[] = [];

/**
 * A SECURITY DEFINER function runs as its owner: the owner inherits the system role's policies (every
 * tenant's runs) and holds every privilege the application lacks, so one the application may call, or one a
 * trigger runs on its writes (whatever EXECUTE says), takes it past row-level security. An error unless
 * SECURITY_DEFINER_ALLOWED lists it.
 */
async function checkSecurityDefiners(query: CatalogQuery, schema: string, appRole: string): Promise<CatalogFinding[]> {
  const fns = await query(CATALOG_SQL.securityDefiners, [schema, appRole]);
  return fns
    .filter((f) => !SECURITY_DEFINER_ALLOWED.includes(f.name as string))
    .map((f) => ({
      check: 'security-definer' as const,
      severity: 'error' as const,
      subject: `function ${f.name}`,
      reason: `${appRole} ${(f.triggers as string[]).length ? `runs SECURITY DEFINER function ${f.name} by writing ${(f.triggers as string[]).join(', ')} (a trigger)` : `may execute SECURITY DEFINER function ${f.name}`}, which runs as ${f.owner}, past row-level security (the owner reads every tenant's runs): make it SECURITY INVOKER, drop it, or review it and list it in SECURITY_DEFINER_ALLOWED (catalog.ts)`,
    }));
}

/** The search path every function of the schema runs with (migrations' `SET search_path = …` clause): the temporary schema last. */
export const FUNCTION_SEARCH_PATH = 'pg_catalog, public, pg_temp';

/**
 * A function body resolves the names it reads when it runs, through the search path it runs with: its own
 * (`SET search_path`), or else its caller's. PostgreSQL looks a relation up in the session's temporary
 * schema first unless the path lists `pg_temp` (then where it stands), so a session that may create
 * temporary tables shadows what an unqualified name means: the history triggers took the application role
 * for a superuser through a temporary `pg_roles` (ADR 0001, "Trigger functions name what they read"). Every
 * function of the schema (trigger functions, SECURITY DEFINER ones, durable_expect) must run with a path of
 * its own that lists `pg_temp` last. `role-temp` keeps the application from temporary tables; this keeps a
 * function safe where that fails (a database made in a provider's console), and a `CREATE OR REPLACE` written
 * without the clause, which resets it, is caught here and by the schema's tests. Shared by the readiness row
 * `function-search-path` (through inspectCatalog) and `npm run db:check` (schemaStatus, migrate.ts): a function
 * a migration or a hand recreated without the clause fails the check before a release, not only at runtime.
 */
export async function functionSearchPathFindings(query: CatalogQuery, schema: string): Promise<CatalogFinding[]> {
  const fns = await query(CATALOG_SQL.functionSearchPaths, [schema]);
  const fix = (name: string) => `ALTER FUNCTION ${name} SET search_path = ${FUNCTION_SEARCH_PATH} (and keep the clause in every CREATE OR REPLACE of it)`;
  return fns.flatMap((f): CatalogFinding[] => {
    const name = f.name as string;
    const kind = `${f.trigger ? ' (a trigger function)' : ''}${f.definer ? ' (SECURITY DEFINER)' : ''}`;
    const path = f.search_path as string | null;
    const subject = `function ${name}`;
    if (path === null) {
      return [{ check: 'function-search-path', severity: 'error', subject, reason: `${name}${kind} has no search_path of its own: it resolves the names it reads through its caller's, whose temporary schema comes first; ${fix(name)}` }];
    }
    const schemas = path.split(',').map((x) => x.trim().replace(/^"(.*)"$/, '$1'));
    if (schemas[schemas.length - 1] !== 'pg_temp') {
      return [{ check: 'function-search-path', severity: 'error', subject, reason: `${name}${kind} runs with search_path ${path}, which does not list pg_temp last: PostgreSQL searches the temporary schema first when the path does not name it; ${fix(name)}` }];
    }
    return [];
  });
}

/** `allowed`: the privileges on tables without tenant_id the role may hold (APP_UNTENANTED_GRANTS for the application role, none for any other). */
async function inspectRole(query: CatalogQuery, schema: string, role: string, unsafe: string[], allowed: Readonly<Record<string, readonly string[]>> = {}): Promise<RoleReport> {
  const [attrs] = await query(CATALOG_SQL.role, [role]);
  if (!attrs) {
    return { role, exists: false, superuser: false, bypassRls: false, canLogin: false, inherit: false, replication: false, createRole: false, createDb: false, otherSchemas: [], owns: [], unsafePrivileges: [], untenantedPrivileges: [], canCreateIn: [], tempIn: undefined, memberOf: [], inheritsFrom: [] };
  }
  const owned = await query(CATALOG_SQL.owned, [role]);
  const privileges = await query(CATALOG_SQL.privileges, [schema, role, unsafe.join(',')]);
  const untenanted = await query(CATALOG_SQL.untenantedPrivileges, [schema, role]);
  const create = await query(CATALOG_SQL.create, [schema, role]);
  const [temp] = await query(CATALOG_SQL.temp, [role]);
  const members = await query(CATALOG_SQL.memberOf, [role]);
  const inherited = await query(CATALOG_SQL.inheritsFrom, [role]);
  const schemas = await query(CATALOG_SQL.otherSchemas, [schema, role]);
  return {
    role,
    exists: true,
    superuser: attrs.rolsuper,
    bypassRls: attrs.rolbypassrls,
    canLogin: attrs.rolcanlogin,
    inherit: attrs.rolinherit,
    replication: attrs.rolreplication,
    createRole: attrs.rolcreaterole,
    createDb: attrs.rolcreatedb,
    otherSchemas: schemas.map((x) => `${x.schema} (${[...(x.create ? ['CREATE'] : []), ...(x.objects as string[])].join(', ')})`),
    owns: owned.map((o) => `${o.kind} ${o.name}`),
    unsafePrivileges: privileges.map((p) => `${p.table}: ${p.privilege}`),
    untenantedPrivileges: untenanted.filter((p) => !allowed[p.table]?.includes(p.privilege)).map((p) => `${p.table}: ${p.privilege}`),
    canCreateIn: create.map((c) => c.target as string),
    tempIn: temp?.database as string | undefined,
    memberOf: members.map((m) => m.rolname as string),
    inheritsFrom: inherited.map((m) => m.rolname as string),
  };
}

type RowPrivilege = (typeof ROW_PRIVILEGES)[number];
interface TableColumns {
  table: string;
  tenanted: boolean;
  columns: { name: string; held: Record<RowPrivilege, boolean> }[];
}

/** The row privileges `role` holds, per column, on every table with tenant_id and on the tables `named`. */
async function columnPrivileges(query: CatalogQuery, schema: string, role: string, named: readonly string[]): Promise<TableColumns[]> {
  const tables = new Map<string, TableColumns>();
  for (const r of await query(CATALOG_SQL.columnPrivileges, [schema, role, named.join(',')])) {
    const t = tables.get(r.table) ?? tables.set(r.table, { table: r.table, tenanted: r.tenanted, columns: [] }).get(r.table)!;
    t.columns.push({ name: r.column, held: { SELECT: r.select, INSERT: r.insert, UPDATE: r.update, DELETE: r.delete } });
  }
  return [...tables.values()];
}

/** `durable_runs: DELETE` for the whole table, `durable_runs: UPDATE (input, principal)` for some of its columns. */
const describeGrant = (table: string, privilege: RowPrivilege, columns: readonly string[] | 'all') => (columns === 'all' ? `${table}: ${privilege}` : `${table}: ${privilege} (${columns.join(', ')})`);

/**
 * Compares the row privileges a role holds with what roles.ts grants it (`intended`: appTableGrant or
 * systemTableGrant; undefined for a table another check judges, one without tenant_id), both ways.
 * A privilege beyond it fails (a grant made by hand after db:migrate, or PUBLIC's): DELETE of runs or
 * of evidence, UPDATE of a decision, INSERT of a tenant's own limits; for the system role, whose policies
 * show it every tenant's rows and which the application role can SET ROLE to, a read of a run's input,
 * output or principal (ADR 0003). A privilege it lists that is missing fails too: the code that uses it
 * would fail with "permission denied" (a release whose grants were not applied). Only the excess is asked
 * of a role the application role can SET ROLE to (`via`): it may hold less, never more than the application.
 */
function checkGrants(
  tables: TableColumns[],
  intended: (table: string, tenanted: boolean) => TableGrant | undefined,
  who: { role: string; kind: 'app' | 'system' | 'reachable'; via?: string },
): CatalogFinding[] {
  const extra: string[] = [];
  const missing: string[] = [];
  const seen = new Set<string>();
  for (const t of tables) {
    seen.add(t.table);
    const grant = intended(t.table, t.tenanted);
    if (!grant) continue;
    for (const privilege of ROW_PRIVILEGES) {
      const wanted = grant[privilege];
      const held = t.columns.filter((c) => c.held[privilege]).map((c) => c.name);
      if (privilege === 'DELETE') {
        if (held.length && !wanted) extra.push(describeGrant(t.table, privilege, 'all'));
        if (wanted && !held.length) missing.push(describeGrant(t.table, privilege, 'all'));
        continue;
      }
      const allowed = (column: string) => wanted === 'all' || (Array.isArray(wanted) && wanted.includes(column));
      const beyond = held.filter((c) => !allowed(c));
      if (beyond.length) extra.push(describeGrant(t.table, privilege, !wanted && beyond.length === t.columns.length ? 'all' : beyond));
      const needed = wanted === 'all' ? t.columns.map((c) => c.name) : ((wanted as readonly string[] | undefined) ?? []);
      const lacking = needed.filter((c) => !held.includes(c));
      if (lacking.length) missing.push(describeGrant(t.table, privilege, wanted === 'all' && lacking.length === t.columns.length ? 'all' : lacking));
    }
  }
  // A table the system role reads that does not exist (a migration not applied): every column it reads is missing.
  if (who.kind === 'system') {
    for (const table of Object.keys(SYSTEM_READS).filter((x) => !seen.has(x))) missing.push(describeGrant(table, 'SELECT', SYSTEM_READS[table]!));
  }
  const out: CatalogFinding[] = [];
  const subject = `role ${who.via ?? who.role}`;
  const migrate = 'run `npm run db:migrate` (it applies the grants on every run, even with no migration pending)';
  if (extra.length) {
    const list = extra.join('; ');
    const reason = {
      app: `${who.role} holds privileges its code never uses (roles.ts, appTableGrant: it only appends evidence, decisions and dossiers, only reads limits and revocations, deletes no run): ${list}; ${migrate}`,
      system: `${who.role} holds privileges beyond the columns it reads and the tables it deletes from (roles.ts, SYSTEM_READS, SYSTEM_DELETES), though its policies show it every tenant's rows and the application role can SET ROLE to it: ${list}; ${migrate}`,
      reachable: `holds privileges the application role's code never uses (roles.ts, appTableGrant): ${list}; revoke them from ${who.role}, or revoke ${who.role} from ${who.via}`,
    }[who.kind];
    out.push({ check: 'role-privilege', severity: 'error', subject, reason });
  }
  if (missing.length && who.kind !== 'reachable') {
    const list = missing.join('; ');
    out.push(
      who.kind === 'system'
        ? { check: 'role-reads', severity: 'error', subject, reason: `${who.role} lacks ${list}, which the recovery sweeper, retention and /metrics use as it: ${migrate}` }
        : { check: 'role-grants', severity: 'error', subject, reason: `${who.role} lacks privileges its code uses (roles.ts): ${list}; ${migrate}` },
    );
  }
  return out;
}

/**
 * `members`: the roles it may be a member of (checked for the application, system and operator roles; a role
 * reachable from one of them is already in that role's `memberOf`).
 */
function checkRole(r: RoleReport, kind: 'app' | 'system' | 'operator' | 'reachable', via?: string, members?: readonly string[]): CatalogFinding[] {
  const subject = `role ${via ?? r.role}`;
  const out: CatalogFinding[] = [];
  const fail = (check: CatalogCheck, reason: string) => out.push({ check, severity: 'error', subject, reason });
  if (!r.exists) {
    fail('role-exists', `role ${r.role} does not exist`);
    return out;
  }
  const who = kind === 'reachable' ? 'is' : `${r.role} is`;
  if (r.superuser) fail('role-superuser', `${who} a superuser: superusers bypass row-level security even when it is forced`);
  if (r.bypassRls) fail('role-bypassrls', `${who} BYPASSRLS: it ignores every policy`);
  if (r.replication) fail('role-replication', `${who} REPLICATION: a replication connection streams every row of the cluster, whatever the policies, and it may create replication slots. ALTER ROLE ${r.role} NOREPLICATION`);
  if (r.createRole) fail('role-createrole', `${who} CREATEROLE: it may create roles and grant itself membership in any role but a superuser (pg_execute_server_program, pg_read_all_data, the owner). ALTER ROLE ${r.role} NOCREATEROLE`);
  if (r.createDb) fail('role-createdb', `${who} CREATEDB: it may create databases, which it would own. ALTER ROLE ${r.role} NOCREATEDB`);
  const strangers = members ? r.memberOf.filter((m) => !members.includes(m)) : [];
  if (strangers.length) {
    // PostgreSQL's built-in roles hold rights no catalog privilege shows (COPY … TO PROGRAM, server files, every
    // table's rows, other sessions' statements), and a membership lets the role SET ROLE to them even when NOINHERIT.
    const builtin = strangers.filter((m) => m.startsWith('pg_'));
    const allowed = members!.length ? `ADR 0001 allows ${members!.join(' and ')} only` : 'it must be a member of no role (ADR 0001)';
    fail(
      'role-member',
      `${r.role} is a member of ${strangers.join(', ')}, so it can SET ROLE to ${strangers.length > 1 ? 'them' : 'it'} and hold ${strangers.length > 1 ? 'their' : 'its'} rights${builtin.length ? ` (${builtin.join(', ')}: PostgreSQL's built-in role${builtin.length > 1 ? 's' : ''}, whose rights — server programs and files, every table's rows, other sessions — no privilege on a table shows)` : ''}: ${allowed}. REVOKE ${strangers.join(', ')} FROM ${r.role} (db:setup does)`,
    );
  }
  if (r.otherSchemas.length) {
    fail('role-schema', `${kind === 'reachable' ? 'may' : `${r.role} may`} use schema ${r.otherSchemas.join(', ')} (its own privilege or PUBLIC's): the catalog checks read the application's schema alone, so a view, function or table there (an owner's view returns every tenant's rows) goes unseen. Move it to the application's schema, or REVOKE what reaches it (… ON SCHEMA, or on the object) FROM ${r.role}, PUBLIC; an extension's objects do not count`);
  }
  if ((kind === 'system' || kind === 'operator') && r.canLogin) fail('role-login', `${r.role} can log in; it must be NOLOGIN and reached only by SET LOCAL ROLE`);
  if (r.owns.length) fail('role-owns', `${kind === 'reachable' ? 'owns' : `${r.role} owns`} ${r.owns.join(', ')}: owners may alter or disable the policies`);
  if (r.canCreateIn.length) fail('role-create', `${kind === 'reachable' ? 'may' : `${r.role} may`} create objects (and so own them) in ${r.canCreateIn.join(', ')}`);
  if (r.tempIn) {
    // PUBLIC holds TEMP on a database CREATE DATABASE made (a provider's console) until it is revoked: a
    // temporary table comes first in every search_path, so a session's own table can stand in for the one
    // an unqualified name in a trigger or function means.
    fail('role-temp', `${kind === 'reachable' ? 'may' : `${r.role} may`} create temporary tables in database ${r.tempIn} (TEMP, its own or PUBLIC's): one shadows the table an unqualified name in a trigger or function means. REVOKE TEMP ON DATABASE ${r.tempIn} FROM PUBLIC, ${r.role} (db:setup revokes ALL from PUBLIC)`);
  }
  if (kind === 'app' && r.inheritsFrom.length) {
    // The system role's policies (durable_runs_system_sweep: every tenant's runs) would apply to every
    // application session: it must be reached only by SET LOCAL ROLE, for the sweeper's transactions.
    fail('role-inherits', `${r.role} holds the privileges of ${r.inheritsFrom.join(', ')} without SET ROLE (INHERIT): their cross-tenant policies apply to every session. ALTER ROLE ${r.role} NOINHERIT; on PostgreSQL 16 or later also GRANT … TO ${r.role} WITH INHERIT FALSE`);
  }
  if (r.untenantedPrivileges.length) {
    fail('role-untenanted', `${kind === 'reachable' ? 'holds' : `${r.role} holds`} privileges on tables without tenant_id, whose rows row-level security cannot scope, so every tenant shares them: ${r.untenantedPrivileges.join('; ')}`);
  }
  if (kind === 'operator' && r.unsafePrivileges.length) {
    fail('role-privilege', `${r.role} holds privileges beyond the operator routes' own (${Object.keys(OPERATOR_GRANTS).join(', ')}): ${r.unsafePrivileges.join('; ')}`);
  } else if (r.unsafePrivileges.length) {
    fail('role-privilege', `${kind === 'reachable' ? 'holds' : `${r.role} holds`} privileges row-level security does not govern: ${r.unsafePrivileges.join('; ')}`);
  }
  return out;
}
