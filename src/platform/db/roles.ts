import pg from 'pg';
import { describePgUrl } from '../config/config.ts';
import { pgClientConfig } from './pg-ssl.ts';
import { APP_UNTENANTED_GRANTS, APP_UNTENANTED_UPDATE_COLUMNS, OPERATOR_DB_ROLE, OPERATOR_GRANTS, SYSTEM_READS, SYSTEM_ROLE } from './tenant-owned.ts';

const ident = (s: string) => `"${s.replace(/"/g, '""')}"`;
const literal = (s: string) => `'${s.replace(/'/g, "''")}'`;

export interface SetupUrls {
  adminUrl: string;
  ownerUrl: string;
  appUrl: string;
}

/**
 * Development and test bootstrap (npm run db:setup): creates the owner role, the application role,
 * the system role, the operator role (ADR 0014) and the database, idempotently, through the superuser
 * URL. Production creates these once by hand or through its provider (docs/runbook.md, *Migrate
 * (outside a deploy)*); the app never runs as superuser.
 */
export async function setupDatabase({ adminUrl, ownerUrl, appUrl }: SetupUrls): Promise<string[]> {
  const owner = describePgUrl(ownerUrl);
  const app = describePgUrl(appUrl);
  if (owner.database !== app.database) throw new Error('DATABASE_URL and MIGRATION_DATABASE_URL must name the same database');
  if (owner.user === app.user) throw new Error('the application role must differ from the owner role');
  const log: string[] = [];
  const admin = new pg.Client(pgClientConfig(adminUrl));
  await admin.connect();
  try {
    // Two setups at once (two test runs, two deploy hooks) would race on the same role rows: PostgreSQL
    // fails the loser's ALTER ROLE with "tuple concurrently updated". One at a time; the lock goes with the session.
    await admin.query('SELECT pg_advisory_lock(hashtext($1))', ['dealix:db-setup']);
    // An existing login role keeps its connection limit and expiry; one that could not log in (NOLOGIN too) is refused, not lifted.
    await refuseUnusableLogins(admin, [owner.user, app.user]);
    // Each role's memberships are the ones granted below and no other (ADR 0001 §2): an existing role keeps none a DBA or an older cluster gave it.
    await ensureRole(admin, owner.user, owner.password, 'LOGIN INHERIT', [SYSTEM_ROLE], log);
    // NOINHERIT: the app may SET ROLE to the system role for narrow maintenance, but never holds its rights implicitly.
    await ensureRole(admin, app.user, app.password, 'LOGIN NOINHERIT', [SYSTEM_ROLE, OPERATOR_DB_ROLE], log);
    await ensureRole(admin, SYSTEM_ROLE, undefined, 'NOLOGIN NOINHERIT', [], log);
    await ensureRole(admin, OPERATOR_DB_ROLE, undefined, 'NOLOGIN NOINHERIT', [], log);
    // From PostgreSQL 16 inheritance is a property of each grant, fixed when it is made: a grant made
    // while the app role was INHERIT would keep it after the ALTER ROLE above. Say it on the grant.
    const { rows: [version] } = await admin.query<{ n: number }>(`select current_setting('server_version_num')::int as n`);
    const noInherit = (version?.n ?? 0) >= 160000 ? ' WITH INHERIT FALSE' : '';
    await admin.query(`GRANT ${ident(SYSTEM_ROLE)} TO ${ident(app.user)}${noInherit}`);
    // The operator routes' role (ADR 0014): reached by SET LOCAL ROLE only, never held implicitly.
    await admin.query(`GRANT ${ident(OPERATOR_DB_ROLE)} TO ${ident(app.user)}${noInherit}`);
    await admin.query(`GRANT ${ident(SYSTEM_ROLE)} TO ${ident(owner.user)}`);
    const exists = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [owner.database]);
    if (exists.rowCount === 0) {
      await admin.query(`CREATE DATABASE ${ident(owner.database)} OWNER ${ident(owner.user)}`);
      log.push(`created database ${owner.database}`);
    } else {
      await admin.query(`ALTER DATABASE ${ident(owner.database)} OWNER TO ${ident(owner.user)}`);
    }
  } finally {
    await admin.end();
  }
  const adminDbUrl = new URL(adminUrl);
  adminDbUrl.pathname = `/${owner.database}`;
  const db = new pg.Client(pgClientConfig(adminDbUrl.toString()));
  await db.connect();
  try {
    await db.query(`ALTER SCHEMA public OWNER TO ${ident(owner.user)}`);
    await db.query('REVOKE ALL ON SCHEMA public FROM PUBLIC');
    await db.query(`GRANT USAGE ON SCHEMA public TO ${ident(app.user)}, ${ident(SYSTEM_ROLE)}, ${ident(OPERATOR_DB_ROLE)}`);
    await db.query(`REVOKE ALL ON DATABASE ${ident(owner.database)} FROM PUBLIC`);
    await db.query(`GRANT CONNECT ON DATABASE ${ident(owner.database)} TO ${ident(app.user)}`);
  } finally {
    await db.end();
  }
  return log;
}

/**
 * What every role of the design is, whatever else `attrs` says (LOGIN, INHERIT): no superuser, BYPASSRLS,
 * REPLICATION (a replication connection streams every row of the cluster), CREATEDB or CREATEROLE (which may
 * grant itself any role but a superuser). Set on a new role and put back on an existing one.
 */
const ROLE_BASELINE = `NOSUPERUSER NOBYPASSRLS NOREPLICATION NOCREATEDB NOCREATEROLE`;

/**
 * A new role's connection limit and password expiry: none. An existing role keeps its own — an operator's
 * deliberate expiry or connection cap (a shared staging cluster's) is not setup's to lift — unless it stops
 * the role from working at all (roleUnusable): then setup refuses, changing nothing.
 */
const ROLE_CREATED_UNLIMITED = `CONNECTION LIMIT -1 VALID UNTIL 'infinity'`;

/** A login role of the design as it exists now, or undefined: not there yet (created by setup). */
interface ExistingRole {
  /** rolcanlogin: NOLOGIN is the plainest lock-out (credentials retired). */
  canLogin: boolean;
  connectionLimit: number;
  /** rolvaliduntil: null (never expires), a date, or Infinity/-Infinity. */
  validUntil: Date | number | null;
  /** Whether that expiry has passed, by the server's clock. */
  expired: boolean;
}

/**
 * Why an existing role that setup would make LOGIN could not log in as it stands, or undefined. Setup refuses
 * rather than lift the setting: NOLOGIN, an expiry or `CONNECTION LIMIT 0` may be an operator's deliberate
 * lock-out (credentials retired), and setup sets the password from the URL too.
 */
function roleUnusable(name: string, role: ExistingRole): string | undefined {
  const q = ident(name);
  if (!role.canLogin) {
    return `role ${name} is NOLOGIN: it cannot log in. db:setup does not lift a lock-out; allow it (ALTER ROLE ${q} LOGIN) as a superuser, then run db:setup again`;
  }
  if (role.expired) {
    const at = role.validUntil instanceof Date ? role.validUntil.toISOString() : String(role.validUntil);
    return `role ${name}'s password expired at ${at} (VALID UNTIL): it cannot log in. db:setup keeps a role's own expiry and does not lift one; extend it (ALTER ROLE ${q} VALID UNTIL '<date>') or remove it (ALTER ROLE ${q} VALID UNTIL 'infinity') as a superuser, then run db:setup again`;
  }
  if (role.connectionLimit === 0) {
    return `role ${name} has CONNECTION LIMIT 0: it cannot connect. db:setup keeps a role's own connection limit and does not lift one; set one the processes' pools fit in (ALTER ROLE ${q} CONNECTION LIMIT <n>, -1 for none) as a superuser, then run db:setup again`;
  }
  return undefined;
}

/**
 * Creates `name` (without connection limit or expiry), or puts an existing one back as designed: its
 * attributes (ROLE_BASELINE, `attrs`; its connection limit and expiry are left as they are), and no
 * membership but in `memberOf` (granted by the caller) — a role of PostgreSQL's such as
 * pg_execute_server_program runs programs on the server, and the catalog check fails on it (`role-member`).
 * Each grant is revoked as its grantor made it (PostgreSQL 16 keeps one per grantor).
 */
async function ensureRole(client: pg.Client, name: string, password: string | undefined, attrs: string, memberOf: readonly string[], log: string[]): Promise<void> {
  const pw = password ? ` PASSWORD ${literal(password)}` : '';
  if (!(await existingRole(client, name))) {
    await client.query(`CREATE ROLE ${ident(name)} ${attrs} ${ROLE_BASELINE} ${ROLE_CREATED_UNLIMITED}${pw}`);
    log.push(`created role ${name}`);
    return;
  }
  await client.query(`ALTER ROLE ${ident(name)} ${attrs} ${ROLE_BASELINE}${pw}`);
  // A grantor PostgreSQL 15 let be dropped is no role any more: that grant is revoked without GRANTED BY.
  const { rows } = await client.query<{ role: string; grantor: string | null }>(
    `SELECT r.rolname AS role, g.rolname AS grantor FROM pg_auth_members m
       JOIN pg_roles r ON r.oid = m.roleid LEFT JOIN pg_roles g ON g.oid = m.grantor
      WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = $1) AND NOT r.rolname = ANY($2::text[])
      ORDER BY 1, 2`,
    [name, [...memberOf]],
  );
  for (const { role, grantor } of rows) {
    await client.query(`REVOKE ${ident(role)} FROM ${ident(name)}${grantor ? ` GRANTED BY ${ident(grantor)}` : ''}`);
    log.push(`revoked ${role} from ${name}`);
  }
}

async function existingRole(client: pg.Client, name: string): Promise<ExistingRole | undefined> {
  const { rows } = await client.query<{ login: boolean; limit: number; until: Date | number | null; expired: boolean }>(
    `SELECT rolcanlogin AS login, rolconnlimit AS limit, rolvaliduntil AS until, coalesce(rolvaliduntil <= now(), false) AS expired FROM pg_roles WHERE rolname = $1`,
    [name],
  );
  const [row] = rows;
  return row && { canLogin: row.login, connectionLimit: row.limit, validUntil: row.until, expired: row.expired };
}

/** Refuses (before setup changes anything) when an existing login role of the design could not log in: roleUnusable. */
async function refuseUnusableLogins(client: pg.Client, names: readonly string[]): Promise<void> {
  const problems: string[] = [];
  for (const name of names) {
    const role = await existingRole(client, name);
    const problem = role && roleUnusable(name, role);
    if (problem) problems.push(problem);
  }
  if (problems.length) throw new Error(`db:setup changed nothing: ${problems.join('; ')}`);
}

/**
 * Tables the application only ever appends to: it may insert and read their rows, never change or
 * delete them (an evidence pack is the record of a decision; `/verify` compares it with its seal, the
 * hash recorded beside it as the pack was written). An approval decision is who decided a request:
 * with UPDATE one approver's decision could be renamed to pass off as a second approver's. A run's
 * partner dossier and economics model are what `/verify` compares its evidence pack with
 * (evidence-records.ts): with UPDATE or DELETE a pack forged for a run past its second step could be
 * made to agree with them. Their steps only insert them (one row per run, in the step's transaction).
 * `approval_policy_versions` is every version of a tenant's approval policy as it applied, what
 * `/verify` compares a pack's policy with once the policy row was replaced (ADR 0010): with UPDATE or
 * DELETE a version could be made to say what a forged pack says, or erased so that it is not compared.
 */
export const APPEND_ONLY_TABLES = ['approval_decisions', 'approval_policy_versions', 'economics_models', 'evidence_packs', 'evidence_seals', 'partner_dossiers'];

/**
 * Tables the application updates but never deletes from: it may insert, read and update their rows
 * (a change's status and decision, a request's status, the policy in force), never delete one.
 * `approval_policy_changes` is the record of who proposed and who confirmed each loosening of a
 * tenant's approval policy (ADR 0010); `approval_requests` holds each run's class, the approvals it
 * needed and how its wait ended (run retention keeps it: ADR 0011); `approval_policies` is the policy
 * in force, with who set and who approved it (a deleted row is the defaults again, at version 0, with
 * nobody's name on them) — updated whole by a PUT or an approval, so no column grant narrows it: its
 * trigger `versions_in_order` does (only the next version, a loosening only with its approved change:
 * POLICY_VERSION_ORDER, approval.entities.ts). `partner_offboarding_claims` says which run holds a partner from its
 * offboarding's submission on (a claim is taken over, never removed): a deleted claim let a second
 * offboarding of a partner whose first run is still queued be accepted. `partner_offboardings` is the
 * record of a partner frozen, settled and archived (what the offboarding's steps wrote, and what refuses a
 * second offboarding of the partner while it is not abandoned): the code never deletes one; a deleted
 * record erased the partner's settlement and freed the partial unique key that is step 1's backstop
 * against a second offboarding of the partner. `durable_runs` is deleted by
 * run retention alone, as the system role (ADR 0011): a run deleted by the application role would take
 * its completed checkpoints with it (on delete cascade, which row-level security does not govern), the
 * history its restrictive policies keep (durable-checkpoint.entity.ts; ADR 0001, amendment "Checkpoints
 * are history"). With DELETE, any statement run as the application role could erase them.
 */
export const NO_DELETE_TABLES = ['approval_policies', 'approval_policy_changes', 'approval_requests', 'durable_runs', 'partner_offboarding_claims', 'partner_offboardings'];

/**
 * Tables whose rows the application updates in a few columns only: it may UPDATE exactly these (a
 * column-level grant), never the columns that say what was asked and by whom. Every update the code
 * makes is raw SQL naming its columns (no entity of these tables is ever flushed): `approval_requests`
 * by a decision, an SLA expiry and a cancel or failure closing the request (approval.service.ts) —
 * with UPDATE on `approval_class` or `required_approvals` one approver could lower a class C request's
 * four-eyes wait to one approval, which `decide` reads from the row, before deciding it alone, and
 * with UPDATE on `policy_version` the version a forged evidence pack must name could be made its own
 * (evidence-records.ts);
 * `approval_policy_changes` by its approval, rejection, supersession or expiry
 * (approval-policy.changes.ts) — with UPDATE on `policy` or `proposed_by` a pending change could be
 * made to loosen more than its approver confirms, or to name its approver as its proposer;
 * `partner_offboarding_claims` by a takeover (partner-offboarding.steps.ts) — with UPDATE on
 * `partner_reference` a claim could be moved off its partner, as a deleted one would be;
 * `partner_offboardings` by its steps' moves (settled, archived; abandoned when another run's step 1
 * takes the partner over: partner-offboarding.steps.ts) — with UPDATE on `partner_reference` or
 * `run_id` a record could be moved off its partner or its run, and its `partner_name`, `reason` and
 * `frozen_at` are what was asked and when;
 * `durable_checkpoints` by a failure's upsert (executor.ts `markFailed`) and a decision's resume
 * (runtime.ts `resume`) — never its run, sequence_num or step name, which say which step of which run it
 * records (a completed one is not updated at all: the trigger `completed_is_history`,
 * durable-checkpoint.entity.ts, not a grant); `durable_runs` by its steps, its end, a cancel, a
 * retry, a lease, a crash count or a count of jobs that could not read it (runtime.ts, executor.ts) — never its input, principal, workflow
 * (version) or idempotency hash: what was asked, by whom, of which definition. The catalog inspection
 * (catalog.ts) names any UPDATE on another column of these tables.
 */
export const APP_UPDATE_COLUMNS: Readonly<Record<string, readonly string[]>> = {
  approval_policy_changes: ['status', 'decided_by', 'decided_at'],
  approval_requests: ['status', 'decided_at', 'updated_at'],
  durable_checkpoints: ['status', 'output', 'error', 'attempt', 'updated_at', 'completed_at'],
  durable_runs: ['status', 'output', 'error', 'sequence_num', 'lease_owner', 'lease_expires_at', 'updated_at', 'completed_at', 'retry_count', 'retry_history', 'crash_seq', 'crash_count', 'read_timeout_jobs', 'read_timeout_seq', 'read_timeout_keys'],
  partner_offboarding_claims: ['id', 'run_id', 'claimed_at'],
  partner_offboardings: ['status', 'settlement', 'settled_at', 'archived_at'],
};

/**
 * Tables the application only reads: a tenant's limit overrides (ADR 0014), which the admission
 * statement reads under the tenant's context and only a platform operator may set. The operator routes
 * write them as the operator role (OPERATOR_GRANTS); with INSERT, UPDATE or DELETE here any code bound to
 * a tenant (a workflow step, a tenant route) could raise its own tenant's limits. `token_revocations`
 * (ADR 0018) is written by the operator's command as the owner role: with DELETE any code of the
 * application could lift a revocation.
 */
export const READ_ONLY_TABLES = ['tenant_limits', 'token_revocations'];

/**
 * A role's row privileges on one table as roles.ts grants them: each privilege on every column (`all`,
 * a table-wide grant) or on the columns listed; DELETE is table-wide. A privilege left out is not held.
 * What grantRuntimePrivileges grants, and what the catalog inspection (catalog.ts) compares the live
 * grants with, both ways: a privilege held beyond it (a grant made by hand after db:migrate, PUBLIC's on a
 * database made by a provider's console) and one it lists that is missing both fail readiness.
 */
export interface TableGrant {
  SELECT?: 'all' | readonly string[];
  INSERT?: 'all';
  UPDATE?: 'all' | readonly string[];
  DELETE?: true;
}

/** The application role's privileges on a tenant-owned table (`tenantTables`), or on a table without tenant_id (APP_UNTENANTED_GRANTS). */
export function appTableGrant(table: string): TableGrant {
  const untenanted = APP_UNTENANTED_GRANTS[table];
  if (untenanted) return Object.fromEntries(untenanted.map((p) => [p, p === 'DELETE' ? true : p === 'UPDATE' ? (APP_UNTENANTED_UPDATE_COLUMNS[table] ?? 'all') : 'all'])) as TableGrant;
  if (READ_ONLY_TABLES.includes(table)) return { SELECT: 'all' };
  if (APPEND_ONLY_TABLES.includes(table)) return { SELECT: 'all', INSERT: 'all' };
  const writes: TableGrant = { SELECT: 'all', INSERT: 'all', UPDATE: APP_UPDATE_COLUMNS[table] ?? 'all' };
  return NO_DELETE_TABLES.includes(table) ? writes : { ...writes, DELETE: true };
}

/**
 * Tables the system role deletes from: run retention (ADR 0011, limited by the policy
 * durable_runs_system_retention to runs ended a day ago at least), key expiry, and webhook delivery
 * retention (limited by webhook_deliveries_system_retention to deliveries settled a day ago at least; the
 * trigger updated_at_not_backdated keeps that age the database's, tenant-owned.ts). It reads SYSTEM_READS' columns and nothing else:
 * its policies show it every tenant's rows, and the application role can SET ROLE to it.
 */
export const SYSTEM_DELETES = ['durable_runs', 'idempotency_keys', 'webhook_deliveries'];

/** The system role's privileges on a table: the columns of SYSTEM_READS, DELETE on SYSTEM_DELETES. */
export function systemTableGrant(table: string): TableGrant {
  const reads = SYSTEM_READS[table];
  return { ...(reads ? { SELECT: reads } : {}), ...(SYSTEM_DELETES.includes(table) ? { DELETE: true as const } : {}) };
}

/** `SELECT, INSERT, UPDATE ("status", …), DELETE`, as a GRANT names them. */
function grantList(grant: TableGrant): string {
  return (['SELECT', 'INSERT', 'UPDATE', 'DELETE'] as const)
    .flatMap((p) => {
      const on = grant[p];
      if (!on) return [];
      return [on === 'all' || on === true ? p : `${p} (${on.map(ident).join(', ')})`];
    })
    .join(', ');
}

/**
 * Grants the application role exactly the DML it needs, and the system role its narrow columns
 * (ADR 0003; `idempotency_hash` since session 13: an opaque id that every run job's id in Redis
 * already carries, so the sweeper can find a pending run's job without a tenant transaction;
 * `workflow_version` since ADR 0008: which definition a run's jobs need; `retry_count`: the
 * generation of a run's job ids, so a running run's live job is found without a tenant transaction). Run by
 * the owner, in one transaction (see migrate): everything is revoked first, so privileges converge on
 * this list even when an earlier release granted more (a wider column list, TRUNCATE), and running
 * sessions never see a moment without their grants.
 */
export async function grantRuntimePrivileges(client: { execute(sql: string): Promise<unknown> }, appRole: string, tenantTables: string[]): Promise<void> {
  const everyone = `PUBLIC, ${ident(appRole)}, ${ident(SYSTEM_ROLE)}, ${ident(OPERATOR_DB_ROLE)}`;
  for (const table of tenantTables) {
    await client.execute(`REVOKE ALL ON TABLE ${ident(table)} FROM ${everyone}`);
    await client.execute(`GRANT ${grantList(appTableGrant(table))} ON TABLE ${ident(table)} TO ${ident(appRole)}`);
  }
  for (const table of Object.keys(APP_UNTENANTED_GRANTS)) {
    await client.execute(`REVOKE ALL ON TABLE ${ident(table)} FROM ${everyone}`);
    await client.execute(`GRANT ${grantList(appTableGrant(table))} ON TABLE ${ident(table)} TO ${ident(appRole)}`);
  }
  // The sweeper, /metrics, key expiry and retention (ADR 0003, 0011), the webhook redelivery pass (ADR 0013:
  // which deliveries are pending and overdue, never their payload), the workers' re-seed of the active-run
  // overrides (ADR 0014) and every API process's copy of the token revocations (ADR 0018): SYSTEM_READS' columns.
  for (const table of Object.keys(SYSTEM_READS)) {
    await client.execute(`GRANT ${grantList(systemTableGrant(table))} ON TABLE ${ident(table)} TO ${ident(SYSTEM_ROLE)}`);
  }
  // The operator routes (ADR 0014): the only writer of tenant_limits, and its cross-tenant listing.
  for (const [table, privileges] of Object.entries(OPERATOR_GRANTS)) {
    await client.execute(`GRANT ${privileges.join(', ')} ON TABLE ${ident(table)} TO ${ident(OPERATOR_DB_ROLE)}`);
  }
}
