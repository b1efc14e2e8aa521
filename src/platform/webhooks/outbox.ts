/**
 * The transactional outbox's SQL (ADR 0013): webhook deliveries are inserted by the statement that
 * makes the state change causing their event (a run's end, an approval request's creation), as a
 * data-modifying CTE of it, one row per enabled endpoint of the tenant subscribed to the event
 * (INSERT … SELECT from webhook_endpoints). A tenant without endpoints inserts nothing, and the
 * statement is one the transaction sends anyway: no round trip more (ADR 0004).
 */

/** A timestamptz expression as ISO 8601 UTC with milliseconds, as JSON payloads carry times. */
export const isoTimeSql = (expr: string) => `to_char(${expr} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;
/** `now()`, the transaction's time, so. */
export const ISO_NOW = isoTimeSql('now()');
/**
 * `statement_timestamp()`, the time of the statement that writes an event, so: after every lock the
 * transaction waited for before it, which now() — the transaction's start — is not. A delivery's
 * `created_at` and its envelope's default `timestamp` are this: a cancel (or a test event) that waited
 * for its row's lock was stamped before the decision it waited for and followed.
 */
export const STATEMENT_TIME = 'statement_timestamp()';
export const ISO_STATEMENT_TIME = isoTimeSql(STATEMENT_TIME);

/** An event a step emits (StepContext.emit): inserted with the step's checkpoint, for each endpoint subscribed. */
export interface OutboxEvent {
  type: string;
  data: Record<string, unknown>;
}

/**
 * The CTE `wh`, inserting the deliveries of `events` — a query yielding (tenant_id uuid, type text,
 * data jsonb) — and returning their ids. The envelope is Standard Webhooks': `{type, timestamp, data}`.
 * `exceptEndpoint`, an expression over the event `ev`, names an endpoint that gets none of them (one
 * the same statement disables, which its snapshot still sees enabled). `at`, a timestamptz expression
 * over `ev`, is when the event happened (the envelope's `timestamp`) when that is not this statement's
 * time (STATEMENT_TIME): a decision recorded at its check after its locks (approval.service.ts). The
 * delivery's `created_at` is this statement's time, never now(), the transaction's start, which may be
 * before a lock wait and so before an event the transaction waited for and followed.
 *
 * The endpoints are read `FOR KEY SHARE`, the lock the deliveries' foreign key takes anyway (no wait
 * added: rotate, disable, enable, update and a recorded attempt lock `FOR NO KEY UPDATE`, which it does
 * not conflict with). Only an endpoint's DELETE (FOR UPDATE) makes it wait, and after that commit the
 * locking read skips the deleted row: without it, the snapshot still saw the endpoint, the insert
 * followed, and its foreign-key check failed the run's end (webhook-endpoint-update-delete.test.ts).
 */
export function outboxCte(events: string, opts: { exceptEndpoint?: string; at?: string } = {}): string {
  const except = opts.exceptEndpoint ? ` and e.id <> ${opts.exceptEndpoint}` : '';
  const timestamp = opts.at ? isoTimeSql(opts.at) : ISO_STATEMENT_TIME;
  return `wh as (
         insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, next_attempt_at, created_at, updated_at)
         select gen_random_uuid(), ev.tenant_id, e.id, ev.type, jsonb_build_object('type', ev.type, 'timestamp', ${timestamp}, 'data', ev.data),
                'pending', 0, now(), date_trunc('milliseconds', ${STATEMENT_TIME}), now()
           from (${events}) ev join webhook_endpoints e on e.tenant_id = ev.tenant_id and e.enabled and ev.type = any(e.events)${except}
            for key share of e
         returning id)`;
}

/**
 * The events of a run that ended, from the CTE `r` (the run as its update returned it: tenant_id, id,
 * workflow, status, correlation_id, completed_at): `run.<status>`, with the workflow's extra data
 * (one `?::jsonb` parameter, e.g. the golden path's evidence pack id), at the run's end (EVENT_AT).
 */
export const RUN_ENDED_EVENTS = `select r.tenant_id, 'run.' || r.status as type,
         jsonb_build_object('workflow', r.workflow, 'run_id', r.id, 'status', r.status, 'correlation_id', r.correlation_id,
                            'ended_at', ${isoTimeSql('r.completed_at')}) || ?::jsonb as data, r.completed_at as at
         from r`;

/** What `r` must return for RUN_ENDED_EVENTS. */
export const RUN_ENDED_COLUMNS = 'tenant_id, id, workflow, status, correlation_id, completed_at';

/**
 * Events a step emitted, for the tenant of the run `r` updated (none when the update found no run):
 * parameters, the events as a JSON array of {type, data}.
 */
export const EMITTED_EVENTS = `select r.tenant_id, ev.type, ev.data, now() as at from r, jsonb_to_recordset(?::jsonb) as ev(type text, data jsonb)`;

/**
 * outboxCte's `at` for RUN_ENDED_EVENTS and EMITTED_EVENTS (alone or in a union): each event's own
 * time. A run's end is its `completed_at` — the envelope's `timestamp` is the `ended_at` in its data,
 * whichever statement ended it (a cancel's, after its lock wait; a step's checkpoint, at its
 * transaction's time, as its checkpoint) — and a step's event is its transaction's time, as the rows
 * it committed with it: not the checkpoint statement's, which comes after the step's work.
 */
export const EVENT_AT = 'ev.at';

/** The select-list item returning the inserted deliveries' ids (a uuid[]; empty when none). */
export const OUTBOX_IDS = `coalesce((select array_agg(id) from wh), '{}'::uuid[]) as webhook_deliveries`;
