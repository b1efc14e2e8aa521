import { z } from 'zod';
import type { EntityManager } from '@mikro-orm/postgresql';
import type { Logger } from 'pino';
import type { Principal } from '../tenancy/jwt.ts';
import { ACTIVE_RUN_STATUSES } from './durable-run.entity.ts';
import { RUN_COLUMNS, type DurableRuntime, type RunRow } from './runtime.ts';
import type { RunCancellation } from './run-views.ts';
import { instantInput } from '../http/iso-time.ts';
import { sqlStateOf } from './errors.ts';

/**
 * Called in a cancel's transaction, once the run is cancelled: what else the run held is released
 * (the golden path's approvals module: its pending request can no longer be decided). Returns what to
 * do after the commit (remove the request's SLA timer), if anything.
 */
export type OnRunCancelled = (em: EntityManager, tenantId: string, runId: string) => Promise<(() => Promise<void>) | undefined>;

/**
 * Cancels one active run whose row the caller's transaction has locked `for update` (the single
 * cancel and the bulk cancel both come here, so a run cancelled either way ends the same): the run
 * becomes `cancelled` with who cancelled it, the module releases what the run held (`onCancelled`),
 * and after the commit the run's log line is written and the release's own work (an SLA timer
 * removed) is done. A step in progress then finds the run ended at its checkpoint and commits nothing.
 */
export async function cancelLockedRun(
  deps: { runtime: DurableRuntime; workflow: string; onCancelled?: OnRunCancelled | undefined },
  ctx: { em: EntityManager; principal: Principal; log: Logger; afterCommit(fn: () => Promise<void>): void },
  run: RunRow,
): Promise<void> {
  // `cancelled_at` is the run's `completed_at`, set by the same statement (the database's clock).
  const cancellation: Omit<RunCancellation, 'cancelled_at'> = { code: 'cancelled', message: `Cancelled by ${ctx.principal.sub}.`, cancelled_by: ctx.principal.sub };
  // The run's `run.cancelled` webhook deliveries commit with the cancel (ADR 0013) and are sent after it.
  const deliveries: string[] = [];
  await deps.runtime.complete(ctx.em, run.id, 'cancelled', { error: cancellation, errorEndedAt: 'cancelled_at' }, deliveries);
  ctx.afterCommit(() => deps.runtime.dispatchDeliveries(run.tenant_id, deliveries));
  const release = await deps.onCancelled?.(ctx.em, run.tenant_id, run.id);
  ctx.afterCommit(async () =>
    // Among the run's lines: its correlation id, not the cancel request's (the request's own line has that).
    ctx.log.info({ run_id: run.id, tenant_id: run.tenant_id, correlation_id: run.correlation_id, workflow: deps.workflow, cancelled_by: ctx.principal.sub, previous_status: run.status }, 'run cancelled'),
  );
  if (release) ctx.afterCommit(release);
}

/** The after-commit actions of a bulk cancel's runs in flight at once (each a Redis command or two). */
const AFTER_COMMIT_CONCURRENCY = 32;

/**
 * Runs `actions` with at most `concurrency` in flight; a failure is logged and the others still run
 * (as the router does for its own after-commit actions).
 */
async function settleConcurrently(actions: ReadonlyArray<() => Promise<void>>, concurrency: number, log: Logger): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < actions.length) {
      const action = actions[next++]!;
      try {
        await action();
      } catch (err) {
        // A webhook job not added is the redelivery pass's; an SLA timer not removed finds its request closed.
        log.error({ err }, 'after-commit action of a bulk cancel failed; the database holds the outcome');
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, actions.length) }, lane));
}

/** PostgreSQL's deadlock_detected: it aborted the statement to break a cycle of lock waits. */
const DEADLOCK_DETECTED = '40P01';
/** Attempts of a bulk cancel's batches in one request when PostgreSQL aborts them to break a deadlock; the last one's 40P01 is the request's (503). */
export const BULK_CANCEL_ATTEMPTS = 3;

/** At most this many runs per bulk cancel request (its `limit`, and its `ids`). */
export const BULK_CANCEL_MAX = 500;
/** Runs locked and cancelled per statement of a bulk cancel: a request of 500 is five such batches. */
export const BULK_CANCEL_BATCH = 100;

export const bulkCancelFilter = z.strictObject({
    status: z
      .array(z.enum(ACTIVE_RUN_STATUSES))
      .min(1)
      .max(ACTIVE_RUN_STATUSES.length)
      .describe('The statuses to cancel: any of pending, running, waiting (the statuses a single cancel accepts; an ended run is never touched)'),
    created_before: instantInput().optional().describe('Only runs created strictly before this instant (ISO 8601)'),
    ids: z.array(z.uuid()).min(1).max(BULK_CANCEL_MAX).optional().describe(`Only these runs (at most ${BULK_CANCEL_MAX}); an id of no run of the tenant's, of this workflow, matching the filter is reported in unmatched_ids`),
    limit: z.number().int().min(1).max(BULK_CANCEL_MAX).default(100).describe(`At most this many runs are cancelled by the request (1–${BULK_CANCEL_MAX}, default 100); has_more says whether more matched`),
  });
export type BulkCancelFilter = z.infer<typeof bulkCancelFilter>;

export const bulkCancelResult = z
  .strictObject({
    cancelled: z.number().int().describe('How many runs this request cancelled'),
    cancelled_ids: z.array(z.uuid()).describe('The runs this request cancelled, oldest first'),
    has_more: z.boolean().describe('Whether runs matching the filter are left (past the limit): send the request again, with a new Idempotency-Key, until it is false'),
    unmatched_ids: z.array(z.uuid()).describe("Ids of the request that matched no run: no such run of this workflow for the tenant (another tenant's included), already ended, or outside the status or created_before filter; empty without ids"),
  })
  .meta({ id: 'BulkCancelResult' });
export type BulkCancelResult = z.infer<typeof bulkCancelResult>;

/**
 * The bulk cancel: the tenant's runs of `workflow` that match `filter`, oldest first, up to its limit,
 * each locked `for update` (in batches of BULK_CANCEL_BATCH, in one order: created_at, id) and then
 * cancelled by cancelLockedRun, in the caller's transaction. A batch's runs are found (each status's
 * runs of the workflow read in order from a partial index of its own status group, merged; with ids,
 * the runs by their key), then locked by their key, so its cost follows the runs it returns, neither
 * the ended runs the tenant keeps nor its runs of the other active statuses. The tenant is the principal's, in the
 * statement's filter and in the row-level security of the tenant-bound entity manager.
 */
export async function bulkCancel(
  deps: { runtime: DurableRuntime; workflow: string; onCancelled?: OnRunCancelled | undefined },
  ctx: { em: EntityManager; principal: Principal; log: Logger; afterCommit(fn: () => Promise<void>): void },
  filter: BulkCancelFilter,
): Promise<BulkCancelResult> {
  const ids = filter.ids ? [...new Set(filter.ids.map((id) => id.toLowerCase()))] : undefined;
  // The statuses as literals, never a parameter: a prepared statement's generic plan (after five
  // executions) cannot prove a partial index's predicate from `status = any($3)`, and read the tenant's
  // runs through its unique key, or every tenant's runs of those statuses (`status, updated_at`),
  // filtering; named, they prove the index of the runs in flight (pending, running) or of the active
  // ones (ADR 0004, "Plans cached before statistics").
  const statuses = [...new Set(filter.status)];
  for (const status of statuses) if (!(ACTIVE_RUN_STATUSES as readonly string[]).includes(status)) throw new Error(`not an active run status: ${status}`);
  const before = filter.created_before ? ' and created_at < ?::timestamptz' : '';
  const beforeParams: unknown[] = filter.created_before ? [filter.created_before] : [];
  const tenantId = ctx.principal.tenantId;
  // Arrays as PostgreSQL array literals (the driver would spread a JS array into a list): the values are UUIDs.
  const array = (values: readonly string[]) => `{${values.join(',')}}`;
  // A run read by its key, (tenant_id, id), that still matches (a lateral subquery the planner cannot
  // flatten: `offset 0`, or its lock). Its statuses as `status || ''`, which proves no partial index's
  // predicate: `id = k.id` behind an unbounded `workflow`, `status` or `created_at` would walk the
  // tenant's runs.
  const byKey = (columns: string, lock = '') =>
    `cross join lateral (select ${columns} from durable_runs where tenant_id = ? and id = k.id and workflow = ? and (status || '') in (${statuses.map((s) => `'${s}'`).join(', ')})${before} ${lock || 'offset 0'}) r`;
  const keyParams = [tenantId, deps.workflow, ...beforeParams];
  // The keys of the `limit` oldest matching runs but `skip`: with ids, each id read by its key
  // (`id = any($n)` beside the tenant was planned, as a generic plan, as a walk of the tenant's runs
  // testing each against the ids); without, one range per status, each read in order from
  // (tenant_id, workflow, status, created_at, id) and merged oldest first, or for every active status
  // one range of durable_runs_tenant_workflow_active_index (tenant_id, workflow, created_at, id). A
  // subset of the statuses in one scan (`status in ('pending', 'running')`) was planned onto that index
  // of every active run with `status` a filter: it walked the tenant's waiting runs (many: runs parked
  // on approvals) older than its first run in flight, custom plan or generic.
  const ranges = statuses.length === ACTIVE_RUN_STATUSES.length ? [`in (${statuses.map((s) => `'${s}'`).join(', ')})`] : statuses.map((s) => `= '${s}'`);
  const oldest = (em: EntityManager, limit: number, skip: readonly string[]): Promise<{ id: string }[]> => {
    if (ids) {
      return em.execute(`select r.id from unnest(?::uuid[]) as k(id) ${byKey('created_at, id')} where r.id <> all(?::uuid[]) order by r.created_at, r.id limit ?`, [
        array(ids),
        ...keyParams,
        array(skip),
        limit,
      ]);
    }
    const params: unknown[] = [];
    const branches = ranges.map((range) => {
      params.push(tenantId, deps.workflow, ...beforeParams, array(skip), limit);
      return `(select created_at, id from durable_runs where tenant_id = ? and workflow = ? and status ${range}${before} and id <> all(?::uuid[]) order by created_at, id limit ?)`;
    });
    return em.execute(`select id from (${branches.join(' union all ')}) u order by created_at, id limit ?`, [...params, limit]);
  };
  let cancelled: string[] = [];
  // What each cancel leaves for after the commit (its webhook jobs, its log line, its SLA timer's
  // removal: a Redis command each) runs concurrently, not one run after another: with Redis slow or
  // hanging, 500 removals in a row would hold the answer for 500 command timeouts.
  const after: Array<() => Promise<void>> = [];
  ctx.afterCommit(() => settleConcurrently(after, AFTER_COMMIT_CONCURRENCY, ctx.log));
  /** The batches, in `em`: the runs they cancelled, what each left for after the commit pushed to `after`. */
  const cancelBatches = async (em: EntityManager): Promise<string[]> => {
    const done: string[] = [];
    const runCtx = { ...ctx, em, afterCommit: (fn: () => Promise<void>) => void after.push(fn) };
    while (done.length < filter.limit) {
      // A run cancelled by an earlier batch no longer matches `status`; it is named too, so that no batch
      // can take a run again whatever happened to it.
      const batch = Math.min(BULK_CANCEL_BATCH, filter.limit - done.length);
      // The batch's runs found, oldest first, then locked in that order (the order every batch locks
      // in), each by its key; one changed meanwhile no longer matches and is left out (the next batch
      // looks again).
      const found = await oldest(em, batch, done);
      const runs = found.length
        ? await em.execute<RunRow[]>(`select r.* from unnest(?::uuid[]) with ordinality as k(id, n) ${byKey(RUN_COLUMNS, 'for update')} order by k.n`, [
            array(found.map((r) => r.id)),
            ...keyParams,
          ])
        : [];
      for (const run of runs) {
        await cancelLockedRun(deps, runCtx, run);
        done.push(run.id);
      }
      if (found.length < batch) break;
    }
    return done;
  };
  // The batches in a savepoint (a nested transaction), started again from it when PostgreSQL aborts
  // one of their statements to break a deadlock (40P01). Another transaction may lock several of these
  // runs in another order than oldest first — a worker's group commit (ADR 0007) updates the runs of
  // the steps it carries in their arrival order — and of the two, the one whose deadlock check finds
  // the cycle is aborted: most often this one, which began to wait first. The rollback to the
  // savepoint frees the runs locked since (the other transaction goes on), and what the attempt left
  // for after the commit is dropped with it; the Idempotency-Key's claim is committed ahead of this
  // transaction and its answer stored at its end, so the request stays one operation under its key.
  for (let attempt = 1; ; attempt++) {
    try {
      cancelled = await ctx.em.transactional((sub) => cancelBatches(sub));
      break;
    } catch (err) {
      if (sqlStateOf(err) !== DEADLOCK_DETECTED || attempt >= BULK_CANCEL_ATTEMPTS) throw err;
      after.length = 0;
      ctx.log.warn({ err, workflow: deps.workflow, tenant_id: ctx.principal.tenantId, attempt }, 'bulk cancel deadlocked with another transaction and was aborted; starting it again from its savepoint');
    }
  }
  // What still matches: the runs past the limit (has_more), and with ids, which of them were not unmatched.
  const left = await oldest(ctx.em, ids ? ids.length : 1, []);
  const matched = new Set([...cancelled, ...left.map((r) => r.id)]);
  return { cancelled: cancelled.length, cancelled_ids: cancelled, has_more: left.length > 0, unmatched_ids: (ids ?? []).filter((id) => !matched.has(id)) };
}
