import { p, type PolicyDef, type TriggerDef } from '@mikro-orm/core';
import type { MikroORM } from './orm.ts';

/**
 * The tenant setting every policy reads. Written exactly as PostgreSQL prints it back from
 * `pg_policies`, so the schema diff is empty and the drift check can pass; the sub-select makes
 * it an InitPlan evaluated once per statement, and `nullif` turns the post-transaction `''`
 * into NULL, so "no tenant context" matches nothing (default deny) instead of raising.
 */
export const TENANT_SETTING = 'app.tenant_id';
/** NOLOGIN role for narrow cross-tenant maintenance, reached only by SET LOCAL ROLE. See ADR 0003. */
export const SYSTEM_ROLE = 'dealix_system';
/**
 * NOLOGIN role of the platform operator's API routes (ADR 0014), reached only by SET LOCAL ROLE from the
 * application role inside an operator route's transaction: the one role that may write `tenant_limits`
 * (the application role only reads it), and the one that reads every tenant's row (the operator listing).
 */
export const OPERATOR_DB_ROLE = 'dealix_operator';
/**
 * What the operator role holds (granted by every `migrate`, roles.ts; anything beyond it is named by the
 * catalog inspection). Its writes stay under the isolation policy: an operator route binds the
 * transaction to the tenant in its path first. Its one policy of its own lets it read every row.
 */
export const OPERATOR_GRANTS: Readonly<Record<string, readonly string[]>> = {
  tenant_limits: ['SELECT', 'INSERT', 'UPDATE', 'DELETE'],
};
/**
 * The columns the system role reads (the sweeper, `/metrics`, the readiness matrix, key expiry; ADR
 * 0003, 0008): granted by every `migrate` (roles.ts), checked by the catalog inspection (catalog.ts).
 */
export const SYSTEM_READS: Readonly<Record<string, readonly string[]>> = {
  durable_runs: ['id', 'tenant_id', 'workflow', 'workflow_version', 'status', 'sequence_num', 'step_count', 'updated_at', 'idempotency_hash', 'retry_count'],
  idempotency_keys: ['id', 'tenant_id', 'expires_at'],
  webhook_deliveries: ['id', 'tenant_id', 'status', 'next_attempt_at', 'updated_at', 'resends'],
  // The workers' re-seed of the Redis copy of the active-run overrides (ADR 0014).
  tenant_limits: ['tenant_id', 'max_active_runs'],
  // Every API process's in-memory copy of the token revocations (ADR 0018).
  token_revocations: ['tenant_id', 'jti', 'subject', 'not_before', 'expires_at', 'lifted_at'],
};
/**
 * The tables without tenant_id the application role may reach, and how: the migrations table, read
 * by `/readyz` (pending migrations), and the run-retention decision, written by every worker at start
 * and read by the sweeper (ADR 0011), and the token age each API process enforces (ADR 0018): none holds tenant data. Row-level security cannot scope a
 * table without tenant_id, so any other such privilege would show one tenant's rows to every other:
 * granted by every `migrate` (roles.ts), and any privilege beyond it named by the catalog inspection.
 */
export const APP_UNTENANTED_GRANTS: Readonly<Record<string, readonly string[]>> = {
  mikro_orm_migrations: ['SELECT'],
  // The run-retention decision of the worker started last (ADR 0011): one row, a platform setting, no tenant data.
  run_retention_decision: ['SELECT', 'INSERT', 'UPDATE'],
  // The token age the API processes enforce (ADR 0018): a row per declared age (at most 100 new), its seen_at updated alone.
  token_age_limits: ['SELECT', 'INSERT', 'UPDATE'],
};
/**
 * The columns alone the application role may UPDATE on a table of APP_UNTENANTED_GRANTS (unlisted: all).
 * `token_age_limits`: an API process only says it is still there; with UPDATE on `max_token_age_seconds`
 * any code of the application could shorten another process's declared age, and the prune would delete
 * not-before revocations that still refuse its tokens.
 */
export const APP_UNTENANTED_UPDATE_COLUMNS: Readonly<Record<string, readonly string[]>> = {
  token_age_limits: ['seen_at'],
};
export const CURRENT_TENANT_SQL = `( SELECT (NULLIF(current_setting('${TENANT_SETTING}'::text, true), ''::text))::uuid AS "nullif")`;
export const TENANT_PREDICATE_SQL = `(tenant_id = ${CURRENT_TENANT_SQL})`;

/** The isolation policy of a tenant-owned table: USING and WITH CHECK on tenant_id. */
export function tenantIsolationPolicy(table: string): PolicyDef {
  return { name: `${table}_tenant_isolation`, command: 'all', using: TENANT_PREDICATE_SQL, check: TENANT_PREDICATE_SQL };
}

/**
 * In a trigger function: whether the writing role is the table's owner (or a member of it: a superuser is),
 * which could drop or disable the trigger anyway — migrations, repairs and tests' fixtures write as it.
 */
export const BY_TABLE_OWNER = "pg_has_role(current_user, (select c.relowner from pg_catalog.pg_class c where c.oid = tg_relid), 'MEMBER')";

/** The trigger that keeps a retention floor's clock the database's: see retentionClockTrigger. */
export const RETENTION_CLOCK_TRIGGER = 'updated_at_not_backdated';

/**
 * The `updated_at` a retention floor reads is the database's time of the row's last move, never a value
 * its writer chose (ADR 0011, amendment "The floor's clock is the database's"). The system role's delete
 * policies on `durable_runs` and `webhook_deliveries` admit a row only once `updated_at` is a day old
 * (PAST_RETENTION_FLOOR_SQL), and the application role, which reaches that role, writes both tables: it
 * could insert a run or delivery already ended with last week's `updated_at`, backdate one, or end a run
 * waiting for days (settle a delivery pending for days) leaving its old `updated_at` as it was — then delete
 * it at once, through the system role. Before insert or update, a row whose `updated_at` is earlier than
 * the transaction's start (now()) gets now(), when it is inserted, or when the update writes `updated_at`
 * or moves `status`: the code writes now() or a later time of the same transaction on every such write
 * (statement_timestamp(), a decision's checked time), so this changes none of them; an update that does
 * neither (a lease, a crash or read-timeout count, a delivery's note) leaves it as it was — the sweeper's
 * age of a run. Only a superuser (repairs, tests' fixtures) writes another value. The WHEN keeps the
 * function from being called at all on every write the code makes (`updated_at` at or after now()) but
 * an update of an older row that does not move it.
 */
export function retentionClockTrigger(): TriggerDef {
  return {
    name: RETENTION_CLOCK_TRIGGER,
    timing: 'before',
    events: ['insert', 'update'],
    when: '(new.updated_at < now())',
    body:
      "if tg_op = 'UPDATE' and new.updated_at is not distinct from old.updated_at and new.status is not distinct from old.status then return new; end if; " +
      'if (select rolsuper from pg_catalog.pg_roles where rolname = current_user) then return new; end if; ' +
      'new.updated_at := now(); return new;',
  };
}

/** Property builder for the tenant column every tenant-owned entity carries. */
export const tenantIdProperty = () => p.uuid();

/** Marker read by the RLS suite and the readiness matrix: entities whose table is tenant-owned. */
export function isTenantOwned(meta: { properties: Record<string, unknown> }): boolean {
  return 'tenantId' in meta.properties;
}

/** The tables of the ORM's tenant-owned entities, sorted: what migrate grants on and the catalog inspection holds to RLS. */
export function tenantTables(orm: MikroORM): string[] {
  return [...orm.getMetadata().getAll().values()]
    .filter((m) => !m.embeddable && !m.virtual && isTenantOwned(m))
    .map((m) => m.tableName)
    .sort();
}
