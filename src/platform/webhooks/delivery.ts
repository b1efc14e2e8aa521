import { DelayedError, Queue, type Job } from 'bullmq';
import { context as otelContext, trace, type Span } from '@opentelemetry/api';
import type { MikroORM } from '@mikro-orm/postgresql';
import type { Counter } from 'prom-client';
import type { Logger } from 'pino';
import type { Redis } from 'ioredis';
import { systemEm, tenantEm } from '../db/tenant-em.ts';
import { deliveryJobId } from '../queue/job-ids.ts';
import { jobPresence } from '../queue/job-presence.ts';
import { ISO_NOW, isoTimeSql, OUTBOX_IDS, outboxCte } from './outbox.ts';
import { attemptErrorText, postWebhook, type AttemptOutcome } from './send.ts';
import { endAttemptSpan, startAttemptSpan } from './delivery-trace.ts';
import { urlOrigin, type UrlPolicy } from './ssrf.ts';
import type { HostResolver } from './resolve.ts';
import { WEBHOOK_TEST_EVENT } from './webhook.entities.ts';
import { parseSlotMember, slotMember, slotParking, type LostPromotion, type ParkedJobData, type SlotOwner, type TenantSlots } from '../durable/tenant-slots.ts';
import type { LostPromotionLook } from '../durable/worker-host.ts';
import { recallWaiting, type EndpointRates } from './rate-limit.ts';

/** The queue of webhook delivery jobs: every worker serves it, whatever WORKER_QUEUES says (as `maintenance`). */
export const WEBHOOK_QUEUE = 'webhooks';
export const WEBHOOK_DELIVERY_JOB = 'webhook-delivery';
/** The maintenance pass that enqueues pending deliveries whose job Redis lost (ADR 0013). */
export const WEBHOOK_REDELIVERY_JOB = 'webhook-redelivery';

export interface DeliveryJobData extends ParkedJobData {
  tenant_id: string;
  delivery_id: string;
  /**
   * The delivery's endpoint, written when the job parks at a cap (with `parks`): back from its park, it takes its
   * slots before it reads its row, and a cap still full parks it again without a PostgreSQL read (ADR 0013, *Parked backlogs*).
   */
  endpoint_id?: string;
  /**
   * Whose parked set the job parked on last (its endpoint's or its tenant's), written with `parks`: back from a park on its
   * tenant's set, a job its endpoint refuses gives the tenant's set a release of none (takeSlots); one parked on its endpoint's
   * set alone sends the tenant's set nothing.
   */
  parked_per?: SlotOwner;
  /**
   * The `parks` of the park that wrote `parked_per`. A worker of the release before keeps `parked_per` as it was when it parks
   * (its data write spreads the data) but counts `parks` up: a `parked_per` behind `parks` is stale, and the job gives as
   * one without it does (else, parked by that worker on its tenant's set, it stayed the tenant's promotion pending while
   * parked on its endpoint's: a slot of the tenant's held from its parked jobs, and itself promoted out of its endpoint park every lease).
   */
  parked_per_at?: number;
}

/**
 * The caps on attempts in flight (ADR 0013), per endpoint (WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT) and per
 * tenant (WEBHOOK_MAX_IN_FLIGHT_PER_TENANT): slots shared by every worker process, held only during the
 * POST, so neither one slow receiver nor one tenant's WEBHOOK_MAX_ENDPOINTS slow receivers can fill the
 * webhook slots of every worker. A cap absent is off; both absent: no Redis command is added.
 */
export interface WebhookSlotsUse {
  /** Slots `per: 'endpoint'`, leased for longer than one attempt may take (WEBHOOK_TIMEOUT and a margin). */
  endpoint?: TenantSlots;
  /** Slots `per: 'webhook-tenant'` (keys apart from the tenant's run-job slots), leased as `endpoint`'s. */
  tenant?: TenantSlots;
  /** A parked delivery's fallback delay by how often it was parked (default parkDelayMs). */
  parkDelayMs?: (parks: number) => number;
  /** Counts a parked delivery (dealix_webhook_deliveries_parked_total). */
  onParked?(): void;
  /** Counts a parked delivery promoted by the look for lost promotions (dealix_lost_promotions_recovered_total). */
  onRecovered?(how: LostPromotion): void;
}

/** One cap a delivery's attempt takes a slot of: its slots, their parking, and the owner a row names. */
interface WebhookCap {
  slots: TenantSlots;
  parking: ReturnType<typeof slotParking>;
  ownerOf: (endpointId: string, tenantId: string) => string;
  /** How the park's log line names the cap. */
  what: string;
}

export interface DeliverySettings {
  timeoutMs: number;
  maxAttempts: number;
  retryBaseMs: number;
  policy: UrlPolicy;
  /** Resolves receivers' hosts (resolve.ts): c-ares, no threadpool thread, bounded. */
  resolver: HostResolver;
  /** WEBHOOK_DISABLE_AFTER: failing this long with no 2xx disables an endpoint at its next failed attempt; 0 never. */
  disableAfterMs?: number;
}

/** The caps of `use` that are on, the endpoint's first, each with the parking of its delivery jobs (on WEBHOOK_QUEUE, `queue`). */
function webhookCaps(use: WebhookSlotsUse | undefined, queue: () => Queue, logger: Logger): WebhookCap[] {
  const capOf = (slots: TenantSlots | undefined, ownerOf: WebhookCap['ownerOf'], what: string): WebhookCap[] =>
    slots ? [{ slots, ownerOf, what, parking: slotParking(slots, { queueOf: (name) => (name === WEBHOOK_QUEUE ? queue() : undefined), logger, ...(use?.parkDelayMs ? { parkDelayMs: use.parkDelayMs } : {}) }) }] : [];
  // The endpoint's first: a slow endpoint's deliveries park on its own set without touching their tenant's slots.
  return [
    ...capOf(use?.endpoint, (endpointId) => endpointId, 'webhook endpoint at its cap of attempts in flight: delivery parked until one of its attempts ends'),
    ...capOf(use?.tenant, (_endpointId, tenantId) => tenantId, "tenant at its cap of webhook attempts in flight: delivery parked until one of the tenant's attempts ends"),
  ];
}

/**
 * The webhook deliveries' look for lost promotions (ADR 0012, *Lost promotions*; ADR 0013): their parked sets per endpoint
 * and per tenant, for each cap that is on, made by every worker host on the run jobs' timer (RECOVER_EVERY_MS). Undefined
 * with both caps off: no timer, no Redis command.
 */
export function webhookLostPromotions(use: WebhookSlotsUse | undefined, deps: { queue: () => Queue; logger: Logger }): LostPromotionLook | undefined {
  const caps = webhookCaps(use, deps.queue, deps.logger);
  if (caps.length === 0) return undefined;
  return {
    failed: 'could not look for lost promotions of parked webhook deliveries; the next look tries again',
    // Each cap's look settles before this one does (a failed one's error is the look's): none goes on past it.
    recover: async () => {
      const looked = await Promise.allSettled(caps.map((cap) => cap.parking.recover(use?.onRecovered)));
      const failed = looked.find((l) => l.status === 'rejected');
      if (failed) throw failed.reason;
    },
  };
}

/** The redelivery pass's page of overdue rows (ADR 0013). */
const REDELIVERY_PAGE = 1000;

/** The longest wait between two attempts. */
export const WEBHOOK_RETRY_MAX_MS = 4 * 3600_000;

/** Delay before the attempt after `failed` failed ones: doubling from `baseMs`, at most 4 h, ±20 % jitter. */
export function retryDelayMs(baseMs: number, failed: number): number {
  const d = Math.min(WEBHOOK_RETRY_MAX_MS, baseMs * 2 ** Math.max(0, failed - 1));
  return Math.round(d * (0.8 + Math.random() * 0.4));
}

/**
 * The job options of a delivery job. Its own attempts are for infrastructure only (PostgreSQL down
 * while it records an attempt): the receiver's failures are retried by the handler, which moves the
 * job to `delayed` until the row's next_attempt_at, spending no BullMQ attempt.
 */
const JOB_OPTS = {
  attempts: 5,
  backoff: { type: 'exponential', delay: 1000, jitter: 0.5 },
  removeOnComplete: { age: 3600, count: 1000 },
  removeOnFail: { age: 7 * 24 * 3600, count: 1000 },
};

/** A delivery to enqueue: its id (an outbox row never resent), or its id and `resends` (the row's), which name its job. */
export type DeliveryRef = string | { id: string; resends: number };

/** Adds the delivery jobs of outbox rows (after the commit that inserted or resent them); a job that exists is left as it is. */
export async function enqueueDeliveries(queue: Queue, tenantId: string, refs: readonly DeliveryRef[]): Promise<void> {
  await queue.addBulk(
    refs.map((ref) => {
      const { id, resends } = typeof ref === 'string' ? { id: ref, resends: 0 } : ref;
      return { name: WEBHOOK_DELIVERY_JOB, data: { tenant_id: tenantId, delivery_id: id } satisfies DeliveryJobData, opts: { ...JOB_OPTS, jobId: deliveryJobId(id, resends) } };
    }),
  );
}

/**
 * Whether the attempt being recorded disables its endpoint `e`: it failed, and the endpoint's failures
 * began (`failing_since`) at least WEBHOOK_DISABLE_AFTER ago (`c.cutoff`; null when the setting is off).
 */
const DISABLES = `(not c.ok and coalesce(e.failing_since <= c.cutoff, false))`;

/**
 * The event a disabling emits (from `ep`, the endpoint as the record's update returned it), for the tenant's other endpoints.
 * Its `url` is the endpoint's origin (`c.origin`: scheme, host and port, from urlOrigin), never its path or query:
 * receivers carry their credential there (`?token=…`, Slack's `/services/T…/B…/<secret>`, Discord's
 * `/api/webhooks/<id>/<token>`), and the tenant's other endpoints are other parties — the event handed it to each
 * of them, the path's after the query was cut. The log lines name an endpoint so too; `endpoint_id` says which
 * one, and the admin reads the whole URL on the endpoint.
 */
const ENDPOINT_DISABLED_EVENTS = `select ep.tenant_id, 'webhook_endpoint.disabled' as type,
         jsonb_build_object('endpoint_id', ep.id, 'url', c.origin, 'reason', ep.disabled_reason,
                            'failing_since', ${isoTimeSql('ep.failing_since')}, 'disabled_at', ${isoTimeSql('ep.disabled_at')}) as data
         from ep, c where not ep.enabled`;

/**
 * Records one attempt (the conditional update of the delivery: a duplicate execution finds it moved
 * on and records nothing) and, in the same statement, its endpoint's health: a 2xx clears
 * `failing_since`, the first failure since sets it, and a failure WEBHOOK_DISABLE_AFTER past it
 * disables the endpoint (`disabled_reason = 'failing'`), ends the delivery `failed` (its attempt is
 * its last: the endpoint takes no more) and inserts `webhook_endpoint.disabled` for the tenant's other
 * endpoints subscribed to it (the outbox, ADR 0013).
 *
 * `x` decides once what the attempt does to its endpoint, on the endpoint's row locked (FOR NO KEY
 * UPDATE: the outbox's inserts of deliveries, holding KEY SHARE on it, are not blocked), so both updates
 * read the same answer, and it is the row's latest committed state, not the statement's snapshot: a 2xx
 * or an admin's disable committed meanwhile is seen, and a delivery is never failed for a disabling that
 * did not happen. It is locked only when the attempt changes it (a healthy endpoint's deliveries never
 * queue on its row lock), and before the delivery's row, as every attempt does: no lock order the other
 * way round. An endpoint disabled meanwhile (an admin, another delivery) is left as it is. An attempt
 * that sent nothing (`posted` false: the endpoint was disabled when the attempt read it) says nothing of
 * the receiver: it leaves the endpoint alone, even one re-enabled since. Nor does an attempt to a URL the
 * endpoint no longer has (an admin's PATCH moved it while the POST was in flight): its 2xx or failure is
 * the old receiver's, and must neither clear nor start the new one's `failing_since`, nor disable it; the
 * delivery records it all the same (the row's URL is compared as locked, so a move committed meanwhile is seen).
 */
const RECORD_ATTEMPT = `with c as (
    select ?::boolean as posted, ?::boolean as ok, now() - ?::float8 * interval '1 millisecond' as cutoff, ?::text as origin
  ), x as (
    select e.tenant_id, e.id, ${DISABLES} as disables
      from webhook_endpoints e, c
     where c.posted and e.tenant_id = ? and e.id = ? and e.enabled and e.url = ?
       and case when c.ok then e.failing_since is not null else e.failing_since is null or ${DISABLES} end
       for no key update of e
  ), s as (
    select case when coalesce((select x.disables from x), false) then 'failed' else ?::text end as new_status
  ), d as (
    update webhook_deliveries set attempts = ?, status = s.new_status, last_attempt_at = now(), last_status_code = ?, last_error = ?,
           attempt_log = coalesce(attempt_log, '[]'::jsonb) || jsonb_build_array(jsonb_build_object('at', ${ISO_NOW},
                         'status_code', ?::int, 'error', ?::text, 'duration_ms', ?::int)),
           next_attempt_at = case when s.new_status = 'pending' then now() + ? * interval '1 millisecond' end,
           delivered_at = case when s.new_status = 'delivered' then now() end, updated_at = now()
      from s
     where tenant_id = ? and id = ? and status = 'pending' and attempts = ?
     returning id, tenant_id, endpoint_id, s.new_status as status
  ), ep as (
    update webhook_endpoints e
       set failing_since = case when c.ok then null else coalesce(e.failing_since, now()) end,
           enabled = not x.disables,
           disabled_at = case when x.disables then now() else e.disabled_at end,
           disabled_reason = case when x.disables then 'failing' else e.disabled_reason end,
           updated_at = now()
      from d, x, c
     where e.tenant_id = x.tenant_id and e.id = x.id
     returning e.tenant_id, e.id, e.url, e.enabled, e.failing_since, e.disabled_at, e.disabled_reason
  ), ${outboxCte(ENDPOINT_DISABLED_EVENTS, { exceptEndpoint: `(ev.data->>'endpoint_id')::uuid` })}
  select d.id, d.endpoint_id, d.status, coalesce((select not ep.enabled from ep), false) as disabled, (select ep.failing_since from ep) as failing_since, ${OUTBOX_IDS}
    from d`;

interface RecordedAttempt {
  id: string;
  endpoint_id: string;
  /** As recorded: `failed` when this attempt disabled the endpoint, whatever the attempt count allowed. */
  status: 'pending' | 'delivered' | 'failed';
  /** This attempt disabled the endpoint. */
  disabled: boolean;
  failing_since: Date | null;
  /** The `webhook_endpoint.disabled` deliveries it inserted. */
  webhook_deliveries: string[];
}

interface DeliveryRow {
  id: string;
  endpoint_id: string;
  status: string;
  attempts: number;
  payload: unknown;
  next_attempt_at: Date | null;
  url: string;
  secret: string;
  /** A rotated-out secret still in its overlap (null once expired, by the database's clock). */
  previous_secret: string | null;
  enabled: boolean;
  /** The endpoint's `rate_limit_per_second` (null: none), read with it at each attempt: a change applies to the next. */
  rate_limit_per_second: number | null;
  /** An admin resent it once settled (resend.ts), or it is a test event (test-event.ts): this pending cycle is one attempt. */
  resent: boolean;
  event_type: string;
  /** The run whose event it is, if it is one and the run is still stored: its attempts' spans join its trace. */
  run_id: string | null;
  run_traceparent: string | null;
  run_correlation_id: string | null;
}

/** A run id as the outbox writes it (a uuid): only such a payload field is joined to durable_runs, as a uuid. */
const RUN_ID_OF_PAYLOAD = `case when d.payload->'data'->>'run_id' ~ '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$' then (d.payload->'data'->>'run_id')::uuid end`;

/**
 * The worker side: `webhook-delivery` (one attempt, recorded on the row; retried with backoff by
 * moving the job to `delayed`) and `webhook-redelivery` (the maintenance pass).
 */
export function webhookHandlers(deps: {
  orm: MikroORM;
  logger: Logger;
  settings: DeliverySettings;
  /** The webhooks queue, where the redelivery pass adds jobs. */
  queue: () => Queue;
  /** The queue's Redis connection: the redelivery pass reads its jobs' presence there (jobPresence). */
  redis: Redis;
  outcomes?: Counter<'outcome'>;
  /** dealix_webhook_endpoints_auto_disabled_total. */
  autoDisabled?: Counter;
  /** How overdue a pending delivery must be before the redelivery pass enqueues it again (its job lost). */
  redeliverAfterMs: number;
  /** The caps on attempts in flight, if on (WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT, WEBHOOK_MAX_IN_FLIGHT_PER_TENANT). */
  webhookSlots?: WebhookSlotsUse;
  /**
   * The endpoints' rate limits (`rate_limit_per_second`), the count of deliveries put back for a turn
   * (dealix_webhook_deliveries_rate_limited_total), and of test events that took a waiting delivery's turn (dealix_webhook_test_events_ahead_total).
   */
  rates?: { limits: EndpointRates; onRateLimited?(): void; onTestAhead?(): void };
}) {
  const { settings } = deps;
  const use = deps.webhookSlots;
  const caps = webhookCaps(use, deps.queue, deps.logger);
  /**
   * Takes a slot of each cap that is on (its endpoint's, then its tenant's) for the job, and returns them. A
   * cap reached parks the job (delayed, no delivery attempt or BullMQ attempt spent) until one of its
   * owner's attempts ends, and throws DelayedError; a slot taken before it is given back. Its delay: its
   * fallback, scaled by its place in the owner's parked set (rankedDelayMs) — about `cap` of a long
   * backlog come back on their own, the rest by promotion — and no later than when the earliest lease
   * held lapses (`wakeBy`, for the owner's `cap` earliest parked).
   */
  const takeSlots = async (job: Job, endpointId: string, tenantId: string, log: Logger, eventType: string | undefined): Promise<{ cap: WebhookCap; owner: string }[]> => {
    const member = slotMember(job.queueName, job.id!);
    const taken: { cap: WebhookCap; owner: string }[] = [];
    for (const cap of caps) {
      const owner = cap.ownerOf(endpointId, tenantId);
      // take, not acquire: a lease that lapses (its worker died in the POST) frees a slot nobody releases, and
      // the leases are not renewed (WEBHOOK_TIMEOUT bounds the POST), so its expiry is the holder's deadline;
      // the owner's first parked jobs come back by then (wakeBy) rather than after their fallback.
      // Its first park's time (a re-park keeps it): popped for promotion and its slot taken meanwhile, it is ranked where it parks again, near the front.
      const slot = await cap.slots.take(owner, member, (job.data as DeliveryJobData).parked_at).catch((err: unknown) => {
        for (const t of taken.splice(0)) t.cap.parking.give(t.owner, member);
        throw err;
      });
      if (slot.acquired) {
        taken.push({ cap, owner });
        // A slot still free with deliveries parked (the cap raised, a lease lapsed): the next is promoted now, not after its fallback.
        if (slot.wakeParked) cap.parking.wake(owner);
        continue;
      }
      // The endpoint's slot is given back before the job parks on its tenant's set: held while parked, it would hold up the endpoint's parked jobs.
      for (const t of taken.splice(0)) t.cap.parking.give(t.owner, member);
      // Parked last on its tenant's set — promoted from it into a free slot, or back on its fallback while still in it — a job that
      // parks on its endpoint's instead gives the tenant's set a release of none: it is no longer the tenant's promotion pending (a
      // wake left it, promoted again by `recover` every lease) nor parked there (left, a tenant's release promoted it out of its
      // endpoint park), and a slot freed for it goes to the tenant's next parked job. A job parked on its endpoint's set alone is
      // none of these and sends nothing (it gave at every re-park, popping one of the tenant's parked jobs whenever a slot was free);
      // one parked by the release before (no `parked_per`) gives, as it did.
      const d = job.data as DeliveryJobData;
      // A `parked_per` a worker of the release before left behind (not written with this `parks`) is not known.
      const parkedPer = d.parked_per_at === d.parks ? d.parked_per : undefined;
      if (d.parks) for (const later of caps.slice(caps.indexOf(cap) + 1)) if ((parkedPer ?? later.slots.per) === later.slots.per) later.parking.give(later.ownerOf(endpointId, tenantId), member);
      // Its endpoint and this park's set kept with the park (written by its data write, with the `parks` it counts): back, it finds its slots before its row.
      job.data = { ...d, endpoint_id: endpointId, parked_per: cap.slots.per, parked_per_at: (d.parks ?? 0) + 1 } satisfies DeliveryJobData;
      return await cap.parking.park(job, job.token, owner, member, ({ parks, delayMs }) => {
        use?.onParked?.();
        log[parks === 1 ? 'info' : 'debug']({ webhook_endpoint_id: endpointId, cap: cap.slots.cap, cap_per: cap.slots.per, parks, fallback_delay_ms: delayMs }, cap.what);
      }, slot, eventType === WEBHOOK_TEST_EVENT);
    }
    return taken;
  };
  /**
   * One attempt's POST, within a slot of each cap that is on (takeSlots: a cap reached parks the job). Every
   * slot taken is given back as soon as the receiver answered (or the attempt timed out, or a Redis call
   * failed), before the attempt is recorded. A job back from a park holds them already (the handler took
   * them before it read its row): its take renews them.
   */
  const post = async (job: Job, row: DeliveryRow, tenantId: string, log: Logger, send: () => Promise<AttemptOutcome>): Promise<AttemptOutcome> => {
    if (caps.length === 0) return send();
    const member = slotMember(job.queueName, job.id!);
    const taken = await takeSlots(job, row.endpoint_id, tenantId, log, row.event_type);
    try {
      return await send();
    } finally {
      for (const t of taken) t.cap.parking.give(t.owner, member);
    }
  };
  /**
   * A job parked before that ends here without an attempt (its delivery settled, gone or not due, its
   * endpoint disabled meanwhile) may hold the slots it took before its row read, or have been promoted into a
   * free slot it does not take: its slots are given back (a release of none is a wake) and the owners'
   * next parked jobs promoted instead of waiting out their fallback delay.
   */
  const passOn = (job: Job, data: DeliveryJobData, endpointId: string | undefined) => {
    if (!data.parks) return;
    const member = slotMember(job.queueName, job.id!);
    const endpoint = endpointId ?? data.endpoint_id;
    for (const cap of caps) if (endpoint || cap.slots.per !== 'endpoint') cap.parking.give(cap.ownerOf(endpoint ?? '', data.tenant_id), member);
  };
  /**
   * An endpoint with a `rate_limit_per_second` (ADR 0013, *Rate limits*): the attempt goes now if it has
   * a turn, before it takes any in-flight slot; else the job is put back (delayed) until the turn it
   * reserved, having spent no attempt of either kind, touched no row and held no slot, and throws
   * DelayedError. A turn is handed out once: a job let go that then parks at a slot cap has spent it.
   * A test event (`first`) takes the earliest turn a waiting delivery holds, ahead of the backlog; that
   * delivery's job, back at its old turn, finds the fresh one it was given at the tail and is put back until it.
   */
  const waitForTurn = async (job: Job, row: DeliveryRow, data: DeliveryJobData, log: Logger, perSecond: number, first: boolean): Promise<void> => {
    const rates = deps.rates!.limits;
    const member = slotMember(job.queueName, job.id!);
    const { waitMs, displaced } = first ? await rates.takeFirst(row.endpoint_id, member, perSecond) : { waitMs: await rates.take(row.endpoint_id, member, perSecond), displaced: null };
    if (displaced) {
      deps.rates!.onTestAhead?.();
      log.info({ webhook_endpoint_id: row.endpoint_id, rate_limit_per_second: perSecond, wait_ms: waitMs, displaced_job_id: parseSlotMember(displaced).jobId }, 'webhook test event took the next rate turn, ahead of the deliveries waiting; the delivery that held it waits for a turn at the tail');
    }
    if (waitMs === 0) return;
    // Promoted into a free in-flight slot it does not take now: the owners' next parked job takes it.
    passOn(job, data, row.endpoint_id);
    await job.moveToDelayed(Date.now() + waitMs, job.token);
    deps.rates!.onRateLimited?.();
    log.debug({ webhook_endpoint_id: row.endpoint_id, rate_limit_per_second: perSecond, wait_ms: waitMs }, 'webhook endpoint at its rate limit: delivery put back until its turn');
    // Its turn recalled (the limit changed) between the take and the move: it takes one under the new limit now, not at the old turn.
    if (!(await rates.holdsTurn(row.endpoint_id, member))) await job.promote().catch(() => undefined);
    throw new DelayedError();
  };
  /**
   * After the commit that disabled an endpoint: say so (ops), count it, give up its deliveries waiting for a rate turn now
   * and drop its rate keys (as an admin's disable does), and send the tenant's other endpoints the event.
   */
  async function endpointDisabled(r: RecordedAttempt, tenantId: string, jobId: string | undefined) {
    deps.autoDisabled?.inc();
    if (deps.rates) recallWaiting(deps.rates.limits, deps.queue(), r.endpoint_id, deps.logger, true);
    deps.logger.warn(
      { ops_event: 'webhook_endpoint_auto_disabled', tenant_id: tenantId, webhook_endpoint_id: r.endpoint_id, failing_since: r.failing_since, disable_after_ms: settings.disableAfterMs, events_queued: r.webhook_deliveries.length, job_id: jobId },
      'webhook endpoint disabled: its deliveries failed for WEBHOOK_DISABLE_AFTER with no success',
    );
    // A lost enqueue is found by the redelivery pass: the deliveries are committed.
    if (r.webhook_deliveries.length) await enqueueDeliveries(deps.queue(), tenantId, r.webhook_deliveries).catch((err: unknown) => deps.logger.warn({ err, tenant_id: tenantId }, 'webhook_endpoint.disabled deliveries not enqueued; the redelivery pass will'));
  }
  /** One execution of a delivery job: its row read, its attempt (within its slots), its record. */
  const deliver = async (job: Job, data: DeliveryJobData) => {
    const em = tenantEm(deps.orm, data.tenant_id);
    // Under the tenant's row-level security: a job naming another tenant's delivery finds nothing.
    const [row] = await em.transactional((tx) =>
      tx.execute<DeliveryRow[]>(
        `select d.id, d.endpoint_id, d.status, d.attempts, d.payload, d.next_attempt_at, e.url, e.secret, e.enabled, e.rate_limit_per_second, (d.resent_at is not null or d.event_type = '${WEBHOOK_TEST_EVENT}') as resent,
                  case when e.previous_secret_expires_at > now() then e.previous_secret end as previous_secret,
                  d.event_type, r.id as run_id, r.traceparent as run_traceparent, r.correlation_id as run_correlation_id
             from webhook_deliveries d join webhook_endpoints e on e.tenant_id = d.tenant_id and e.id = d.endpoint_id
                  left join durable_runs r on r.id = ${RUN_ID_OF_PAYLOAD} and r.tenant_id = d.tenant_id
            where d.tenant_id = ? and d.id = ?`,
        [data.tenant_id, data.delivery_id],
      ),
    );
    if (!row) {
      passOn(job, data, undefined);
      return { outcome: 'not_found' };
    }
    if (row.status !== 'pending') {
      passOn(job, data, row.endpoint_id);
      return { outcome: row.status };
    }
    // A run's event: its lines are among the run's (its run id and correlation id), as its attempt spans are.
    const ofRun = row.run_id ? { run_id: row.run_id, ...(row.run_correlation_id ? { correlation_id: row.run_correlation_id } : {}) } : {};
    const log = deps.logger.child({ tenant_id: data.tenant_id, webhook_delivery_id: row.id, job_id: job.id, ...ofRun });
    // Enqueued again before its attempt was due (the redelivery pass, a duplicate): wait for it.
    const due = row.next_attempt_at ? new Date(row.next_attempt_at).getTime() : 0;
    if (due > Date.now() + 1000) {
      passOn(job, data, row.endpoint_id);
      await job.moveToDelayed(due, job.token);
      throw new DelayedError();
    }
    if (!row.enabled) passOn(job, data, row.endpoint_id);
    // A disabled endpoint's attempt is no POST, and takes no turn.
    // A test event (an admin watching for its outcome) goes ahead of the deliveries waiting for turns and of those parked at a cap.
    const first = row.event_type === WEBHOOK_TEST_EVENT;
    if (row.enabled && row.rate_limit_per_second !== null && deps.rates) await waitForTurn(job, row, data, log, row.rate_limit_per_second, first);
    const attempt = row.attempts + 1;
    // The attempt's span starts with its POST (not while the job waits for a slot, or parks) and ends once the attempt is recorded.
    let span: Span | undefined;
    const send = () => {
      const traced = startAttemptSpan({
        tenantId: data.tenant_id, deliveryId: row.id, endpointId: row.endpoint_id, eventType: row.event_type, attempt, url: row.url,
        runId: row.run_id, runTraceparent: row.run_traceparent, runCorrelationId: row.run_correlation_id,
      });
      span = traced.span;
      const secrets = row.previous_secret ? [row.secret, row.previous_secret] : [row.secret];
      return otelContext.with(traced.ctx, () => postWebhook({ url: row.url, secrets, msgId: row.id, body: JSON.stringify(row.payload), timeoutMs: settings.timeoutMs, policy: settings.policy, resolver: settings.resolver }));
    };
    const outcome: AttemptOutcome = row.enabled ? await post(job, row, data.tenant_id, log, send) : { ok: false, statusCode: null, error: 'endpoint disabled', durationMs: 0 };
    // A resent delivery (or a test event) is owed one attempt, not a new retry cycle (ADR 0013): it fails again at once.
    const planned = outcome.ok ? 'delivered' : !row.enabled || row.resent || attempt >= settings.maxAttempts ? 'failed' : 'pending';
    const delayMs = planned === 'pending' ? retryDelayMs(settings.retryBaseMs, attempt) : 0;
    const disableAfterMs = settings.disableAfterMs ?? 0;
    // Bound as text and into jsonb: no control character (a NUL is refused by both), whatever produced the outcome.
    const errorText = attemptErrorText(outcome.error);
    const recorded = await em
      .transactional((tx) =>
        tx.execute<RecordedAttempt[]>(RECORD_ATTEMPT, [
          row.enabled, outcome.ok, disableAfterMs > 0 ? disableAfterMs : null, urlOrigin(row.url), data.tenant_id, row.endpoint_id, row.url, planned,
          attempt, outcome.statusCode, errorText, outcome.statusCode, errorText, outcome.durationMs, delayMs, data.tenant_id, row.id, row.attempts,
        ]),
      )
      .catch((err: unknown) => {
        if (span) endAttemptSpan(span, outcome, 'unrecorded');
        throw err;
      });
    // Another execution recorded this attempt first (a duplicate job): its outcome stands.
    if (recorded.length === 0) {
      if (span) endAttemptSpan(span, outcome, 'superseded');
      // That execution may have been this very job's, run before a stall (its lock lost): it recorded a retry, but its
      // move to delayed failed, and this one's completing would leave the retry to the redelivery pass (its delay, plus
      // the pass's overdue age, plus up to one WEBHOOK_REDELIVERY_INTERVAL). Still pending, and this job still its
      // current cycle's (a resend's job, or an earlier cycle's, is another job and completes): delayed to its next attempt.
      const [now] = await em.transactional((tx) =>
        tx.execute<{ status: string; resends: number; next_attempt_at: Date | null }[]>(`select status, resends, next_attempt_at from webhook_deliveries where tenant_id = ? and id = ?`, [data.tenant_id, row.id]),
      );
      if (now?.status === 'pending' && job.id === deliveryJobId(row.id, now.resends)) {
        if (data.parks !== undefined) await job.updateData({ tenant_id: data.tenant_id, delivery_id: data.delivery_id } satisfies DeliveryJobData);
        await job.moveToDelayed(Math.max(Date.now(), now.next_attempt_at ? new Date(now.next_attempt_at).getTime() : 0), job.token);
        throw new DelayedError();
      }
      return { outcome: 'superseded' };
    }
    if (recorded[0]!.disabled) await endpointDisabled(recorded[0]!, data.tenant_id, job.id);
    // The attempt that disabled its endpoint ended its delivery too.
    const status = recorded[0]!.status;
    const counted = status === 'pending' ? 'retrying' : status;
    if (span) endAttemptSpan(span, outcome, counted);
    deps.outcomes?.inc({ outcome: counted });
    // The attempt's line names the attempt's span (in the run's trace), not the job's, which may be another trace's (a resend's).
    const inAttempt = (write: () => void) => (span ? otelContext.with(trace.setSpan(otelContext.active(), span), write) : write());
    if (status === 'delivered') {
      inAttempt(() => log.info({ attempt, status_code: outcome.statusCode, duration_ms: outcome.durationMs }, 'webhook delivered'));
      return { outcome: status, attempt };
    }
    if (status === 'failed') {
      inAttempt(() => log.warn({ attempt, status_code: outcome.statusCode, err: outcome.error }, 'webhook delivery failed for good'));
      return { outcome: status, attempt };
    }
    inAttempt(() => log.info({ attempt, status_code: outcome.statusCode, err: outcome.error, retry_in_ms: delayMs }, 'webhook delivery attempt failed; retrying later'));
    // The retry is a new attempt: parked then, it queues behind the deliveries parked before it (not ahead of them all, by
    // this attempt's parked_at), with the first fallback delay, its park logged at info. Only a job that was parked pays the write.
    if (data.parks !== undefined) await job.updateData({ tenant_id: data.tenant_id, delivery_id: data.delivery_id } satisfies DeliveryJobData);
    await job.moveToDelayed(Date.now() + delayMs, job.token);
    throw new DelayedError();
  };
  return {
    async [WEBHOOK_DELIVERY_JOB](job: Job) {
      const data = job.data as DeliveryJobData;
      // Back from a park: its slots first, and a cap still full parks it again before it reads its row (ADR 0013,
      // *Parked backlogs*): a backlog's deliveries that come back on their fallback cost PostgreSQL nothing.
      if (caps.length > 0 && data.parks && data.endpoint_id) {
        await takeSlots(job, data.endpoint_id, data.tenant_id, deps.logger.child({ tenant_id: data.tenant_id, webhook_delivery_id: data.delivery_id, job_id: job.id }), undefined);
        try {
          return await deliver(job, data);
        } catch (err) {
          // Failed (PostgreSQL down while it read its row): the slots it took are given back now, not at their lease's lapse.
          // (Every DelayedError gave them back already: parked again, put off, or its attempt made.)
          if (!(err instanceof DelayedError)) passOn(job, data, data.endpoint_id);
          throw err;
        }
      }
      return deliver(job, data);
    },

    /**
     * Pending deliveries overdue by more than `redeliverAfterMs` — their job lost with Redis, or never
     * added (Redis down at the commit) — get their job again: ids only, read as the system role
     * (ADR 0013). A job that exists is kept; one that ended without settling the row is replaced.
     * Every overdue row is looked at, a page of REDELIVERY_PAGE at a time in (next_attempt_at, id)
     * order, each page's job states read together: a backlog whose jobs exist (deliveries waiting for
     * a rate turn or parked at a cap, overdue as the rows are not moved) no longer hides the lost jobs
     * behind it — the pass read its first 1,000 rows only, and a lost delivery of any tenant after them
     * waited until that backlog drained (hours, behind an endpoint at 1/s); after a Redis flush a
     * backlog of N came back at 1,000 a minute. (The promotions lost of parked deliveries are made by every worker host's
     * look, webhookLostPromotions, not here.)
     */
    async [WEBHOOK_REDELIVERY_JOB]() {
      const queue = deps.queue();
      let overdue = 0;
      let enqueued = 0;
      // The page's last row, its time as PostgreSQL's text (µs kept: a Date's ms would read a page of one ms again, for ever).
      let after: { at: string; id: string } | undefined;
      // The pass's bound, fixed by its first page (PostgreSQL's text, as `after`): the rows overdue when it started. Each
      // page's own now() would let a long pass chase the rows falling overdue meanwhile, for ever if they came faster than it reads.
      let cutoff: string | undefined;
      for (;;) {
        const rows = await systemEm(deps.orm).transactional((tx) =>
          tx.execute<{ id: string; tenant_id: string; resends: number; at: string; cutoff: string }[]>(
            `select id, tenant_id, resends, next_attempt_at::text as at, c.cutoff::text as cutoff
               from webhook_deliveries, (select ${cutoff ? '?::timestamptz' : "now() - ? * interval '1 millisecond'"} as cutoff) c
              where status = 'pending' and next_attempt_at < c.cutoff${after ? ' and (next_attempt_at, id) > (?::timestamptz, ?::uuid)' : ''}
              order by next_attempt_at, id limit ${REDELIVERY_PAGE}`,
            [cutoff ?? deps.redeliverAfterMs, ...(after ? [after.at, after.id] : [])],
          ),
        );
        cutoff ??= rows[0]?.cutoff;
        overdue += rows.length;
        // The job of the row's current cycle (its resends): an earlier cycle's job says nothing of it.
        const states = await jobPresence(deps.redis, queue, rows.map((r) => deliveryJobId(r.id, r.resends)));
        const lost = new Map<string, DeliveryRef[]>();
        for (const [i, r] of rows.entries()) {
          const state = states[i];
          if (state === 'ended') await queue.remove(deliveryJobId(r.id, r.resends));
          else if (state !== 'unknown') continue;
          lost.set(r.tenant_id, [...(lost.get(r.tenant_id) ?? []), { id: r.id, resends: r.resends }]);
          enqueued++;
        }
        for (const [tenantId, refs] of lost) await enqueueDeliveries(queue, tenantId, refs);
        if (rows.length < REDELIVERY_PAGE) break;
        const last = rows.at(-1)!;
        after = { at: last.at, id: last.id };
      }
      if (enqueued) deps.logger.info({ enqueued, overdue }, 'webhook deliveries re-enqueued (their jobs were lost)');
      return { overdue, enqueued };
    },
  };
}
