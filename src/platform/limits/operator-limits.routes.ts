import type { Request } from 'express';
import { z } from 'zod';
import type { EntityManager } from '@mikro-orm/postgresql';
import { defineRoute, type RouteDef } from '../http/route.ts';
import { isoTime, toIsoTimeOrNull } from '../http/iso-time.ts';
import { DEFER_UNTIL_NEXT } from '../db/coalescing-client.ts';
import { OPERATOR_DB_ROLE } from '../db/tenant-owned.ts';
import { nextKeyCursor, pageLimit, pageSchema, readKeyCursor } from '../http/cursor.ts';
import { OPERATOR_ROLE } from '../http/admin-auth.middleware.ts';
import type { Principal } from '../tenancy/jwt.ts';
import { MAX_ACTIVE_RUNS_OVERRIDE, MAX_RUNS_IN_FLIGHT_OVERRIDE } from './tenant-limits.entity.ts';

export const OPERATOR_TENANTS_PATH = '/api/v1/operator/tenants';
const PATH = `${OPERATOR_TENANTS_PATH}/:tenant_id/limits`;
/** Every tenant's overrides, one page at a time (a cross-tenant read as the operator role). */
export const OPERATOR_TENANT_LIMITS_PATH = '/api/v1/operator/tenant-limits';
const TAGS = ['operator'];


const limitsBody = z.strictObject({
  max_active_runs: z
    .number()
    .int()
    .min(1)
    .max(MAX_ACTIVE_RUNS_OVERRIDE)
    .nullable()
    .describe(`The tenant's run jobs executing at once, all workers (1–${MAX_ACTIVE_RUNS_OVERRIDE}); null: WORKER_MAX_ACTIVE_RUNS_PER_TENANT`),
  max_runs_in_flight: z
    .number()
    .int()
    .min(1)
    .max(MAX_RUNS_IN_FLIGHT_OVERRIDE)
    .nullable()
    .describe(`The tenant's runs pending or running before a submission is refused with 429 (1–${MAX_RUNS_IN_FLIGHT_OVERRIDE}); null: MAX_RUNS_IN_FLIGHT_PER_TENANT`),
});
type LimitsBody = z.infer<typeof limitsBody>;

const limitView = z.strictObject({
  effective: z.number().int().min(0).describe('What applies to the tenant now; 0: no cap (the setting is 0, off, and then an override does not apply either)'),
  source: z.enum(['override', 'default']).describe('`override` when the tenant has one and the setting is on; else `default`'),
  override: z.number().int().nullable().describe('The operator-set value, null when none'),
  default: z.number().int().min(0).describe("The process-wide setting, as this API process reads it; 0 = off"),
  enforced: z.boolean().describe('false when the setting is 0 (off): an override is stored but applies only once the setting is on'),
});
type LimitView = z.infer<typeof limitView>;

const limitsView = z
  .strictObject({
    tenant_id: z.string().uuid(),
    max_active_runs: limitView.describe('Run jobs executing at once (workers, WORKER_MAX_ACTIVE_RUNS_PER_TENANT, ADR 0012)'),
    max_runs_in_flight: limitView.describe('Runs pending or running (submissions, MAX_RUNS_IN_FLIGHT_PER_TENANT)'),
    updated_by: z.string().nullable().describe('The sub of the operator who set the overrides; null without any'),
    updated_at: isoTime.nullable(),
  })
  .meta({ id: 'TenantLimits' });
type LimitsView = z.infer<typeof limitsView>;

const tenantParam = z.object({ tenant_id: z.string().uuid() });

const listQuery = z.strictObject({
  limit: pageLimit(50),
  cursor: z.string().max(200).optional().describe('`next_cursor` of the page before (a cursor not shaped as this list encodes one: 400)'),
});
const limitsPage = pageSchema(limitsView).meta({ id: 'TenantLimitsPage' });
type LimitsPage = z.infer<typeof limitsPage>;

interface LimitsRow {
  max_active_runs: number | null;
  max_runs_in_flight: number | null;
  updated_by: string;
  updated_at: Date;
}

export interface OperatorLimitsDeps {
  /** WORKER_MAX_ACTIVE_RUNS_PER_TENANT and MAX_RUNS_IN_FLIGHT_PER_TENANT (0 = off). */
  defaults: { maxActiveRuns: number; maxRunsInFlight: number };
  /** Writes a tenant's active-run override (null: none) to the workers' Redis copy, after the commit (tenant-limits.ts). */
  publishActiveRuns(tenantId: string, maxActiveRuns: number | null): Promise<void>;
}

function limit(override: number | null, fallback: number): LimitView {
  const enforced = fallback > 0;
  const applies = enforced && override !== null;
  return { effective: applies ? override : fallback, source: applies ? 'override' : 'default', override, default: fallback, enforced };
}

function toView(tenantId: string, row: LimitsRow | undefined, d: OperatorLimitsDeps['defaults']): LimitsView {
  return {
    tenant_id: tenantId,
    max_active_runs: limit(row?.max_active_runs ?? null, d.maxActiveRuns),
    max_runs_in_flight: limit(row?.max_runs_in_flight ?? null, d.maxRunsInFlight),
    updated_by: row?.updated_by ?? null,
    updated_at: toIsoTimeOrNull(row?.updated_at ?? null),
  };
}

/**
 * Runs `fn`'s statements as the operator role (ADR 0014), the one role that may write tenant_limits
 * (the application role only reads it, so code bound to a tenant — a workflow step, a tenant route —
 * cannot raise its own limits), then as the application role again. With `tenant`, the transaction is
 * also bound to the tenant in the path for them (RLS: the operator role writes that tenant's row only),
 * then back to the operator's own tenant, under which the router stores the Idempotency-Key. Without, it
 * stays on the operator's own tenant and reads every row (the role's own SELECT policy). The settings
 * travel with the next statement (no round trip of their own); `role` is SET LOCAL ROLE's setting, so
 * it ends with the transaction, and an error rolls the whole transaction back, so nothing needs restoring then.
 */
async function asOperator<T>(em: EntityManager, fn: () => Promise<T>, tenant?: { path: string; own: string }): Promise<T> {
  const bind = (role: string, tenantId: string | undefined) =>
    tenantId === undefined
      ? em.execute(`${DEFER_UNTIL_NEXT}select set_config('role', ?, true)`, [role])
      : em.execute(`${DEFER_UNTIL_NEXT}select set_config('role', ?, true), set_config('app.tenant_id', ?, true)`, [role, tenantId]);
  await bind(OPERATOR_DB_ROLE, tenant?.path);
  const out = await fn();
  await bind('none', tenant?.own);
  return out;
}

const COLUMNS = 'max_active_runs, max_runs_in_flight, updated_by, updated_at';
const operatorOnly = { 403: { description: `Not a platform operator (role ${OPERATOR_ROLE}): a tenant's own roles, admin included, do not open these routes` } };

/**
 * A platform operator's per-tenant overrides of the per-tenant limits (ADR 0014). The operator's
 * token names a tenant like any other (the Idempotency-Key is stored under it); the limits are read
 * and written as the tenant named in the path. An override applies only where its setting is on.
 */
export function operatorLimitsRoutes(deps: OperatorLimitsDeps): RouteDef[] {
  return [
    defineRoute({
      method: 'get',
      path: OPERATOR_TENANT_LIMITS_PATH,
      summary: `Every tenant's limit overrides (role ${OPERATOR_ROLE}), by tenant id, with cursor pagination: only tenants with a row (PUT), each as GET shows it`,
      tags: TAGS,
      roles: [OPERATOR_ROLE],
      query: listQuery,
      responses: {
        200: { description: 'A page of tenants with overrides, ordered by tenant_id ascending; a tenant whose overrides were deleted is absent', schema: limitsPage },
        400: { description: 'A bad or unknown query parameter: `limit` not a whole number 1–100, or a `cursor` not shaped as this list encodes one (its shape is checked, not who issued it)' },
        ...operatorOnly,
      },
      async handler({ em, query }) {
        // Ordered by the primary key: a position no PUT moves, so paging reads every row present
        // throughout exactly once (one set or removed meanwhile may or may not appear).
        const after = readKeyCursor(query.cursor);
        const rows = await asOperator(em, () =>
          em.execute<(LimitsRow & { tenant_id: string })[]>(
            `select tenant_id, ${COLUMNS} from tenant_limits${after ? ' where tenant_id > ?::uuid' : ''} order by tenant_id limit ?`,
            after ? [after, query.limit + 1] : [query.limit + 1],
          ),
        );
        const page = rows.slice(0, query.limit);
        const body: LimitsPage = {
          items: page.map((r) => toView(r.tenant_id, r, deps.defaults)),
          next_cursor: nextKeyCursor(page[page.length - 1]?.tenant_id, rows.length > query.limit),
        };
        return { status: 200, body };
      },
    }),
    defineRoute({
      method: 'get',
      path: PATH,
      summary: `A tenant's limits (role ${OPERATOR_ROLE}): what applies, and which values are overrides`,
      tags: TAGS,
      roles: [OPERATOR_ROLE],
      params: tenantParam,
      responses: { 200: { description: "The tenant's limits", schema: limitsView }, ...operatorOnly },
      async handler({ em, params, principal }) {
        const [row] = await asOperator(em, () => em.execute<LimitsRow[]>(`select ${COLUMNS} from tenant_limits where tenant_id = ?`, [params.tenant_id]), {
          path: params.tenant_id,
          own: principal.tenantId,
        });
        return { status: 200, body: toView(params.tenant_id, row, deps.defaults) };
      },
    }),
    defineRoute({
      method: 'put',
      path: PATH,
      summary: `Set a tenant's limit overrides (role ${OPERATOR_ROLE}); null: the default`,
      tags: TAGS,
      roles: [OPERATOR_ROLE],
      idempotency: 'required',
      params: tenantParam,
      body: limitsBody,
      responses: {
        200: { description: 'Stored; the limits as they now apply (the workers at their next slot acquire once the copy is written after the commit — within one SWEEPER_INTERVAL at worst — and the next submission at once)', schema: limitsView },
        ...operatorOnly,
        422: { description: 'Invalid body: a field missing, unknown, not an integer, or out of range; nothing stored' },
      },
      async handler({ req, em, params, principal, body, afterCommit }) {
        const b: LimitsBody = body;
        const [previous, row] = await asOperator(em, async () => {
          // Two PUTs for a tenant without a row would both read none (FOR UPDATE locks no row): a lock per
          // tenant, held to the commit, orders them, so the audit's `previous` is what the other one stored.
          // It travels with the read (no round trip more).
          await em.execute(`${DEFER_UNTIL_NEXT}select pg_advisory_xact_lock(hashtextextended('dealix:tenant_limits:' || ?, 0))`, [params.tenant_id]);
          const [before] = await em.execute<LimitsRow[]>(`select ${COLUMNS} from tenant_limits where tenant_id = ? for update`, [params.tenant_id]);
          const [after] = await em.execute<LimitsRow[]>(
            `insert into tenant_limits (tenant_id, max_active_runs, max_runs_in_flight, updated_by, updated_at) values (?, ?, ?, ?, now())
             on conflict (tenant_id) do update set max_active_runs = excluded.max_active_runs, max_runs_in_flight = excluded.max_runs_in_flight,
               updated_by = excluded.updated_by, updated_at = excluded.updated_at
             returning ${COLUMNS}`,
            [params.tenant_id, b.max_active_runs, b.max_runs_in_flight, principal.sub],
          );
          return [before, after] as const;
        }, { path: params.tenant_id, own: principal.tenantId });
        afterCommit(async () => {
          auditChange(req, principal, params.tenant_id, previous, row);
          await deps.publishActiveRuns(params.tenant_id, b.max_active_runs);
        });
        return { status: 200, body: toView(params.tenant_id, row, deps.defaults) };
      },
    }),
    defineRoute({
      method: 'delete',
      path: PATH,
      summary: `Remove a tenant's limit overrides (role ${OPERATOR_ROLE}): the defaults apply again`,
      tags: TAGS,
      roles: [OPERATOR_ROLE],
      idempotency: 'required',
      params: tenantParam,
      responses: {
        200: { description: 'Removed (or there were none); the limits as they now apply', schema: limitsView },
        ...operatorOnly,
        422: { description: 'A body was sent: this operation takes none' },
      },
      async handler({ req, em, params, principal, afterCommit }) {
        const [previous] = await asOperator(em, () => em.execute<LimitsRow[]>(`delete from tenant_limits where tenant_id = ? returning ${COLUMNS}`, [params.tenant_id]), {
          path: params.tenant_id,
          own: principal.tenantId,
        });
        afterCommit(async () => {
          if (previous) auditChange(req, principal, params.tenant_id, previous, undefined);
          await deps.publishActiveRuns(params.tenant_id, null);
        });
        return { status: 200, body: toView(params.tenant_id, undefined, deps.defaults) };
      },
    }),
  ];
}

const overridesOf = (row: LimitsRow | undefined) => ({ max_active_runs: row?.max_active_runs ?? null, max_runs_in_flight: row?.max_runs_in_flight ?? null });

/** The audit line of a change (ADR 0014): who (the operator's sub and own tenant), whose limits, from what to what. */
function auditChange(req: Request, principal: Principal, tenantId: string, previous: LimitsRow | undefined, now: LimitsRow | undefined): void {
  req.log.info(
    { security_event: 'tenant_limits_changed', tenant_id: tenantId, changed_by: principal.sub, operator_tenant_id: principal.tenantId, previous: overridesOf(previous), overrides: overridesOf(now) },
    'tenant limits changed by a platform operator',
  );
}
