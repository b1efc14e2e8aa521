import { DelayedError, Job, type Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';

/*
 * Per-owner slots for jobs, in two sorted sets per owner shared by every worker process. The owner is a
 * tenant for run jobs (WORKER_MAX_ACTIVE_RUNS_PER_TENANT, ADR 0012), a webhook endpoint for delivery
 * jobs (WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT, ADR 0013) or a tenant for delivery jobs
 * (WEBHOOK_MAX_IN_FLIGHT_PER_TENANT, ADR 0013: keys of their own, apart from its run jobs'); `per` names it in the keys:
 *   <prefix>:<per>-slots:<owner>   the jobs executing now, scored by lease expiry (Redis time, ms);
 *   <prefix>:<per>-parked:<owner>  the jobs parked (delayed) for want of a slot, scored by when
 *                                  each was first parked (Redis time, ms): the earliest is promoted first.
 * A member is `<queue>:<job id>` (BullMQ job ids have no ':'). Each script reads Redis's own clock,
 * so neither leases nor the order of parked jobs depend on the worker hosts' clocks agreeing.
 */

/*
 * The slots key expires with its last lease: a write sets its expiry to its own lease only when that
 * extends it, so a shorter lease (a worker with a shorter WORKER_LOCK_DURATION) never cuts a longer
 * one held by another worker short (PTTL is -1 without an expiry, -2 without the key).
 */

/**
 * How long an emptied parked set is kept: longer than any fallback delay (at most 120 s × PARKED_RANK_FACTOR_MAX),
 * so a live parked job's entry outlives it: each job of a set comes back (and parks again, renewing it) within it.
 */
const PARKED_TTL_MS = 3 * 3600_000;

/**
 * Pops the owner's earliest parked member (KEYS[2]) for the caller to promote, and returns it, noting it in the owner's
 * promotions pending (KEYS[4]) until the promotion is due to be taken up (now + the grace, ARGV[#ARGV - 1]): one the caller
 * never made (it died between this pop and its promote) is made again by `recover` once overdue, not left to its fallback. A set still holding
 * members gets PARKED_TTL_MS again if it had less (never shortened): a worker of the release before set 10 minutes at
 * each park, and a backlog drained by promotions alone — no park since — lost its set after them mid-deploy, its
 * deliveries still parked (rank-scaled fallbacks of up to 2 h) coming back only on those.
 */
const popAnswering = (answer: string) => `  local p = redis.call('ZPOPMIN', KEYS[2])
  if p[1] then
    redis.call('ZADD', KEYS[4], now + tonumber(ARGV[#ARGV - 1]), p[1])
    redis.call('PEXPIRE', KEYS[4], ${PARKED_TTL_MS})
    local ttl = redis.call('PTTL', KEYS[2])
    if ttl > 0 and ttl < ${PARKED_TTL_MS} then redis.call('PEXPIRE', KEYS[2], ${PARKED_TTL_MS}) end
    return ${answer}
  end
`;
/** POP answering the popped member. */
const POP = popAnswering('p[1]');

/** Redis's clock in ms; the writes that follow replicate as effects (Redis 7 always does; older ones are told to). */
const NOW = `if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
`;

/**
 * The owner's cap: its override in the limits hash (KEYS[3], field: the owner, the last ARGV; written by
 * the operator API and re-seeded from PostgreSQL, ADR 0014) when it has one, else the cap passed
 * (`arg`, the process's setting). One HGET inside the script: no round trip more, override or not.
 * Only a whole number from 1 to 10^9 is an override: anything else in the field (written by hand, or by
 * a bug) is ignored, so it neither fails every script of the owner's jobs, nor lifts the cap (inf), nor
 * stops the owner's jobs for good (0).
 */
const CAP = (arg: number) => `local cap = tonumber(ARGV[${arg}])
local override = tonumber(redis.call('HGET', KEYS[3], ARGV[#ARGV]) or '')
if override and override >= 1 and override <= 1000000000 and override == math.floor(override) then cap = override end
`;

/**
 * A slot is free for one more promotion: the owner's slots held plus its promotions pending (KEYS[4]: each popped member is on
 * its way to a slot freed for it) leave one under its cap. Every pop (release, park, wake, recover) and an acquire's `wakeParked`
 * check count both: counting the slots held alone, a slot freed for a popped member that had not taken it yet was promised again
 * — cap 3, two slots given back (p1, p2 popped), p1's acquire saw one free with jobs parked and woke p3 — and the job that came
 * second was refused and parked again, a job round trip for nothing (a fetch, the acquire, its data rewritten, moveToDelayed, the
 * park). A member that acquires or parks, or gives back a slot it never took, leaves the pending set before the count.
 */
const ROOM = `redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[4]) < cap`;

/**
 * KEYS: slots, parked, limits, promoting. ARGV: member, cap, lease ms, parked at ('' for none), owner. Drops lapsed leases; a member that holds a slot
 * renews it, another takes one when fewer than `cap` are held: {1, room, cap} when the member holds a slot after
 * it (`cap`: the one applied; `room` 1 when a slot is still free (ROOM: promotions pending count as taken,
 * the member's own no longer) while jobs are parked — the cap was raised, or a lease lapsed — for the caller to wake the next, else 0). Else {0, ms, cap, now}: `now` is Redis's clock,
 * the parked-set score of a job parked for the first time (its `parked_at`); `ms` is how long until the earliest live lease lapses (Redis's clock, relative, so the
 * caller's clock need not agree) when the member is — or, parking now, would be — among the owner's
 * `cap` earliest parked, else 0; `rank` is that place (0 the earliest). A member not in the set is placed where it would
 * park: by its first park's time (`parked at`, kept in its job's data: a job popped for promotion whose slot was taken
 * meanwhile parks again there, near the front), else at the tail (the set's length).
 * A lease that lapses (its holder died) frees a slot nobody releases:
 * those few come back when it does, and take it; the others wait for promotions as before, so a long
 * parked set does not all come back at every lease's end.
 */
const ACQUIRE = `${NOW}${CAP(2)}
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < cap then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
  if ${ROOM} and redis.call('ZCARD', KEYS[2]) > 0 then return {1, 1, cap} end
  return {1, 0, cap}
end
local rank = redis.call('ZRANK', KEYS[2], ARGV[1])
if not rank then
  if ARGV[4] ~= '' then rank = redis.call('ZCOUNT', KEYS[2], '-inf', '(' .. ARGV[4]) else rank = redis.call('ZCARD', KEYS[2]) end
end
if rank >= cap then return {0, 0, cap, now, rank} end
local earliest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(earliest[2]) - now, cap, now, rank}`;

/** KEYS: slots. ARGV: member, lease ms. Extends the member's lease (re-adds it if it lapsed: the job is still running). */
const RENEW = `${NOW}
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1`;

/**
 * KEYS: slots, parked, limits, promoting, owners. ARGV: member, cap, parked at (ms, the order of promotion), parked set ttl ms,
 * grace ms, owner. Records the member as parked (no longer a promotion pending) and its owner among those with jobs parked (for
 * `recover`); when a slot is free by now (ROOM: one was released between the member's
 * acquire and its park, with no promotion pending for it), pops the earliest parked member for the caller to promote, else false.
 */
const PARK = `${NOW}${CAP(2)}
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[5], 'NX', now, ARGV[#ARGV])
redis.call('PEXPIRE', KEYS[5], ARGV[4])
if ${ROOM} then
${POP}end
return false`;

/**
 * KEYS: slots, parked, limits, promoting. ARGV: member, cap, grace ms, owner. Gives the member's slot back (a member that held
 * none — promoted, it ended or parked on another owner's set without taking it — is no longer a promotion pending either: left,
 * it ate a free slot in `recover` and was promoted again every grace), nor parked on this owner's set (a delivery parked on its
 * tenant's set that parks on its endpoint's instead: left, a release of the tenant's promoted it out of its endpoint park, ahead
 * of the deliveries parked there before it, and kept the tenant in the owners' index); when a slot is free (ROOM), pops the
 * earliest parked member for the caller to promote, else false.
 */
const RELEASE = `redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
${NOW}${CAP(2)}
if ${ROOM} then
${POP}end
return false`;

/**
 * KEYS: slots, parked, limits, promoting. ARGV: cap, gone ('' for none), grace ms, owner. When a slot is free (ROOM), pops the earliest
 * parked member for the caller to promote, else false: the next one, after a popped member whose job was gone (`gone`, no
 * longer a promotion pending) could not use the slot.
 */
const WAKE = `${NOW}${CAP(1)}
if ARGV[2] ~= '' then redis.call('ZREM', KEYS[4], ARGV[2]) end
if ${ROOM} then
${POP}end
return false`;

/**
 * KEYS: slots, parked, limits, promoting, owners. ARGV: cap, grace ms, owner. A promotion lost (ADR 0012, *Lost promotions*):
 * a promotion pending past its grace (its popper died before promoting, or the job waits in the queue still) is due again:
 * re-noted for another grace and returned as {'redo', member}, to be promoted (again: a job already waiting is left alone).
 * Else, when a slot is free (ROOM: the owner's slots held and promotions pending leave one) and jobs are parked, pops the earliest: {'promote',
 * member}. The owner leaves the owners' index once it has neither parked jobs nor promotions pending; else it goes to the
 * index's back (checked last next time).
 */
const RECOVER = `${NOW}${CAP(1)}
local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 1)
if due[1] then
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[2]), due[1])
  redis.call('ZADD', KEYS[5], 'XX', now, ARGV[#ARGV])
  return {'redo', due[1]}
end
if redis.call('ZCARD', KEYS[2]) == 0 and redis.call('ZCARD', KEYS[4]) == 0 then
  redis.call('ZREM', KEYS[5], ARGV[#ARGV])
  return false
end
redis.call('ZADD', KEYS[5], 'XX', now, ARGV[#ARGV])
if ${ROOM} then
${popAnswering("{'promote', p[1]}")}end
return false`;

type SlotRedis = Redis & {
  dealixSlotAcquire(slots: string, parked: string, limits: string, promoting: string, member: string, cap: number, leaseMs: number, parkedAt: number | '', owner: string): Promise<[number, number, number, number?, number?]>;
  dealixSlotRenew(slots: string, member: string, leaseMs: number): Promise<number>;
  dealixSlotPark(slots: string, parked: string, limits: string, promoting: string, owners: string, member: string, cap: number, parkedAt: number, ttlMs: number, graceMs: number, owner: string): Promise<string | null>;
  dealixSlotRelease(slots: string, parked: string, limits: string, promoting: string, member: string, cap: number, graceMs: number, owner: string): Promise<string | null>;
  dealixSlotWake(slots: string, parked: string, limits: string, promoting: string, cap: number, gone: string, graceMs: number, owner: string): Promise<string | null>;
  dealixSlotRecover(slots: string, parked: string, limits: string, promoting: string, owners: string, cap: number, graceMs: number, owner: string): Promise<[LostPromotion, string] | null>;
};

/** A parked job's fallback delay: 30–60 s on its first park, 60–120 s after (if its promotion was lost, it comes back on its own). */
export function parkDelayMs(parks: number): number {
  const base = parks <= 1 ? 30_000 : 60_000;
  return Math.round(base * (1 + Math.random()));
}

/**
 * The most a parked job's fallback delay is multiplied by its place in the queue (`rankedDelayMs`): with the
 * 60–120 s fallback, a job far back in a long parked set comes back after 1–2 h at the latest.
 */
export const PARKED_RANK_FACTOR_MAX = 60;

/**
 * The fallback delay of a job parked at `rank` (0 the earliest) in an owner's parked set of cap `cap`, when the
 * caller asks for it (the webhook deliveries, ADR 0013 *Parked backlogs*; run jobs, ADR 0012 *Parked backlogs*): the owner's `cap` earliest keep
 * `fallbackMs`; one further back `ceil((rank + 1) / cap)` times it, at most PARKED_RANK_FACTOR_MAX times. A
 * job that far back is not due a slot before the jobs ahead of it have had theirs: it comes by a promotion,
 * and its fallback is only for a promotion lost. A backlog of N parked then comes back about cap × (1 + ln(N / cap))
 * times per fallback delay up to N = PARKED_RANK_FACTOR_MAX × cap, and about N / PARKED_RANK_FACTOR_MAX beyond, not N
 * times (a silent receiver's day of deliveries at 1/s came back ~960 times a second, each reading its row in PostgreSQL,
 * ahead of every other tenant's deliveries in the FIFO queue; now ~16, with no PostgreSQL read).
 */
export function rankedDelayMs(fallbackMs: number, rank: number, cap: number): number {
  if (rank < cap) return fallbackMs;
  return fallbackMs * Math.min(PARKED_RANK_FACTOR_MAX, Math.ceil((rank + 1) / cap));
}

/** Owners `recover` looks at in one call: the rest (if any) the next calls, the index kept in the order they were looked at. */
const RECOVER_OWNERS_MAX = 100;

/** The parked-set score of a job parked `first`: ahead of every `parked_at` (a time on Redis's clock), so the earliest promoted. */
const PARKED_FIRST = 0;


/** The hash of per-owner overrides of the cap (ADR 0014): `<prefix>:tenant-limits` for run jobs. */
export const tenantLimitsKey = (prefix: string, per: SlotOwner = 'tenant') => `${prefix}:${per}-limits`;

/** A run job's member in the sets: its queue and id. */
export const slotMember = (queue: string, jobId: string) => `${queue}:${jobId}`;

/** The queue and job id of a member. */
export function parseSlotMember(member: string): { queue: string; jobId: string } {
  const at = member.lastIndexOf(':');
  return { queue: member.slice(0, at), jobId: member.slice(at + 1) };
}

export interface TenantSlotsOptions {
  prefix: string;
  /** Jobs one owner may execute at once, over every queue and worker process (at least 1). */
  cap: number;
  /** How long a slot is held without renewal: a SIGKILLed holder's slot lapses after it. */
  leaseMs: number;
  /** What owns the slots, as the keys name it: a tenant's run jobs (default, ADR 0012), a webhook endpoint's or a tenant's deliveries (ADR 0013). */
  per?: SlotOwner;
}

/** What owns a set of slots: a tenant's run jobs, a webhook endpoint's deliveries, a tenant's deliveries. */
export type SlotOwner = 'tenant' | 'endpoint' | 'webhook-tenant';

/** The owner as a log line or an error names it. */
const OWNER_NAME: Record<SlotOwner, { field: string; noun: string }> = {
  tenant: { field: 'tenant_id', noun: 'a tenant' },
  endpoint: { field: 'webhook_endpoint_id', noun: 'an endpoint' },
  'webhook-tenant': { field: 'tenant_id', noun: "a tenant's webhook" },
};

/**
 * The Redis side of a per-owner cap: one script (EVALSHA, loaded once) per acquire, renewal, park
 * and release. The worker host (worker-host.ts, per tenant) and the webhook delivery handler
 * (delivery.ts, per endpoint) decide when to call them; `slotParking` parks and promotes their jobs.
 */
export class TenantSlots {
  private readonly redis: SlotRedis;
  readonly cap: number;
  readonly leaseMs: number;
  readonly per: SlotOwner;
  private readonly prefix: string;

  constructor(redis: Redis, opts: TenantSlotsOptions) {
    this.per = opts.per ?? 'tenant';
    if (!Number.isInteger(opts.cap) || opts.cap < 1) throw new Error(`${OWNER_NAME[this.per].noun}'s slots must be at least 1, not ${opts.cap}`);
    this.cap = opts.cap;
    this.leaseMs = opts.leaseMs;
    this.prefix = opts.prefix;
    if (!('dealixSlotAcquire' in redis)) {
      redis.defineCommand('dealixSlotAcquire', { numberOfKeys: 4, lua: ACQUIRE });
      redis.defineCommand('dealixSlotRenew', { numberOfKeys: 1, lua: RENEW });
      redis.defineCommand('dealixSlotPark', { numberOfKeys: 5, lua: PARK });
      redis.defineCommand('dealixSlotRelease', { numberOfKeys: 4, lua: RELEASE });
      redis.defineCommand('dealixSlotWake', { numberOfKeys: 4, lua: WAKE });
      redis.defineCommand('dealixSlotRecover', { numberOfKeys: 5, lua: RECOVER });
    }
    this.redis = redis as SlotRedis;
  }

  slotsKey(owner: string): string {
    return `${this.prefix}:${this.per}-slots:${owner}`;
  }

  parkedKey(owner: string): string {
    return `${this.prefix}:${this.per}-parked:${owner}`;
  }

  /** The owner's promotions pending: members popped for promotion, scored by when it is overdue (Redis time, ms). */
  promotingKey(owner: string): string {
    return `${this.prefix}:${this.per}-promoting:${owner}`;
  }

  /** The owners with jobs parked or promotions pending (`recover` goes through them), scored by when last looked at. */
  ownersKey(): string {
    return `${this.prefix}:${this.per}-parked-owners`;
  }

  /**
   * The hash of per-owner caps that replace `cap` (field: owner, value: its cap): `<prefix>:tenant-limits`
   * for run jobs (ADR 0014, limits/tenant-limits.ts); nothing writes the webhook owners' ones, so their
   * scripts always find none.
   */
  limitsKey(): string {
    return tenantLimitsKey(this.prefix, this.per);
  }

  /** Takes (or renews) a slot for `member`; false when the tenant holds its cap of others (its override, else `cap`). */
  async acquire(tenant: string, member: string): Promise<boolean> {
    return (await this.take(tenant, member)).acquired;
  }

  /**
   * `acquire`, telling a member that found no slot when to come back if it is to watch the leases held:
   * `wakeBy`, this host's clock at the latest moment the earliest live lease lapses (the clock read before
   * the request, plus Redis's remaining time: never after the lapse, whatever the clocks' offset), for
   * one of the owner's `cap` earliest parked; undefined for the rest. A member that found no slot is also
   * told `refusedAt`, Redis's clock then: the time it is parked at, if this is its first park (`slotParking`),
   * and `rank`, its place among the owner's parked (0 the earliest; one not in the set, where it would park: by
   * `parkedAt`, its first park's time, if it was parked before, else the set's length). One round trip, as `acquire`.
   */
  async take(tenant: string, member: string, parkedAt?: number): Promise<SlotTake> {
    const askedAt = Date.now();
    const [acquired, lapsesInMs, cap, refusedAt, rank] = await this.redis.dealixSlotAcquire(this.slotsKey(tenant), this.parkedKey(tenant), this.limitsKey(), this.promotingKey(tenant), member, this.cap, this.leaseMs, parkedAt ?? '', tenant);
    // A slot still free with jobs parked (a raised override, a lapsed lease): `wakeParked` asks the caller to promote the next.
    if (acquired === 1) return { acquired: true, cap, wakeParked: lapsesInMs === 1 };
    const refused = { acquired: false as const, cap, refusedAt: Number(refusedAt), rank: Number(rank) };
    return lapsesInMs > 0 ? { ...refused, wakeBy: askedAt + lapsesInMs } : refused;
  }

  /** Extends the leases of the slots held, in one round trip. */
  async renew(held: Iterable<{ tenant: string; member: string }>): Promise<void> {
    const pipeline = this.redis.pipeline() as unknown as { dealixSlotRenew(slots: string, member: string, leaseMs: number): void; exec(): Promise<unknown> };
    let n = 0;
    for (const h of held) {
      pipeline.dealixSlotRenew(this.slotsKey(h.tenant), h.member, this.leaseMs);
      n++;
    }
    if (n > 0) await pipeline.exec();
  }

  /** Records `member` (already delayed) as parked since `parkedAt` (Redis time, or PARKED_FIRST); the member to promote when a slot is free now, else null. */
  async park(tenant: string, member: string, parkedAt: number): Promise<string | null> {
    return this.redis.dealixSlotPark(this.slotsKey(tenant), this.parkedKey(tenant), this.limitsKey(), this.promotingKey(tenant), this.ownersKey(), member, this.cap, parkedAt, PARKED_TTL_MS, this.leaseMs, tenant);
  }

  /** Gives `member`'s slot back; the tenant's earliest parked member to promote when a slot is free, else null. */
  async release(tenant: string, member: string): Promise<string | null> {
    return this.redis.dealixSlotRelease(this.slotsKey(tenant), this.parkedKey(tenant), this.limitsKey(), this.promotingKey(tenant), member, this.cap, this.leaseMs, tenant);
  }

  /**
   * The tenant's earliest parked member to promote when a slot is free, else null (no slot changes hands). `gone`: a member
   * popped before whose job could not use the slot (gone or ended), no longer a promotion pending.
   */
  async wake(tenant: string, gone?: string): Promise<string | null> {
    return this.redis.dealixSlotWake(this.slotsKey(tenant), this.parkedKey(tenant), this.limitsKey(), this.promotingKey(tenant), this.cap, gone ?? '', this.leaseMs, tenant);
  }

  /**
   * Lost promotions (ADR 0012, *Lost promotions*): for up to `limit` owners with jobs parked or promotions pending (those
   * looked at longest ago first), a member to promote — a promotion pending for longer than a lease, or the earliest parked
   * when a slot is free with no promotion pending for it — else none; `how` says which (`redo`, `promote`). One round trip
   * with nothing parked: the index's read.
   */
  async recover(limit = RECOVER_OWNERS_MAX): Promise<Array<{ owner: string; member: string; how: LostPromotion }>> {
    const owners = await this.redis.zrange(this.ownersKey(), '0', String(limit - 1));
    const found = await Promise.all(owners.map(async (owner) => ({ owner, answer: await this.redis.dealixSlotRecover(this.slotsKey(owner), this.parkedKey(owner), this.limitsKey(), this.promotingKey(owner), this.ownersKey(), this.cap, this.leaseMs, owner) })));
    return found.flatMap(({ owner, answer }) => (answer ? [{ owner, member: answer[1], how: answer[0] }] : []));
  }
}

/**
 * How the look for lost promotions (`recover`) found a job to promote: `redo`, a promotion pending past its grace (its popper
 * died between pop and promote, or the promote was lost); `promote`, the earliest parked of an owner with a slot free, neither
 * held nor kept for a promotion pending (a lease lapsed, an override raised with nothing acquiring, a pop by a worker of the release before).
 */
export type LostPromotion = 'redo' | 'promote';

/** What `TenantSlots.take` answers: a slot held, or refused (with Redis's clock at the refusal, `refusedAt`, the time a first park is recorded at). */
export type SlotTake = { acquired: true; cap: number; wakeParked: boolean } | { acquired: false; cap: number; refusedAt: number; rank: number; wakeBy?: number };

/** What a parked job carries in its data: how often it was parked, and when first (its place in the parked set, on Redis's clock). */
export interface ParkedJobData {
  parks?: number;
  parked_at?: number;
}

/**
 * A run job's `data` without its park record, for a job that goes on to a new attempt (its step retried
 * after BullMQ's backoff, or put off for a workflow version: ADR 0008): parked again, it is a new arrival,
 * behind the jobs parked since and with the first fallback delay, as a retried webhook delivery is
 * (delivery.ts). Kept, its first park's time put it ahead of them all in its tenant's parked set.
 */
export function unparked<T extends ParkedJobData>(data: T): Omit<T, keyof ParkedJobData> {
  const { parks: _parks, parked_at: _parkedAt, ...rest } = data;
  return rest;
}

/** A popped parked job in one of these states cannot use the slot freed for it. */
const ENDED_STATES = new Set(['completed', 'failed', 'unknown']);

/**
 * The BullMQ side of a per-owner cap, shared by the run jobs' tenant slots and the webhook
 * deliveries' endpoint slots: `park` puts a job that found no slot aside — moved to `delayed` with a
 * long fallback delay (no attempt spent, as a deferral) and recorded in its owner's parked set — and
 * throws DelayedError; `give` releases a slot and promotes the owner's earliest parked job, without
 * holding up the job's end (a lost release lapses with its lease). `queueOf` finds the queue of a
 * popped member (the process's handles).
 */
export function slotParking(slots: TenantSlots, opts: { queueOf: (name: string) => Queue | undefined; logger: Logger; parkDelayMs?: (parks: number) => number }) {
  const { logger } = opts;
  const { field: ownerField, noun } = OWNER_NAME[slots.per];
  /**
   * Moves a popped parked job to `wait` now: `promoted` when it was delayed and is now waiting. `live` when it is no
   * longer delayed but still to run (taken meanwhile, or back on its fallback delay: it acquires on its own), or of a
   * queue this process has no handle on. Either can use the freed slot. `gone` when its job is gone or has ended (removed
   * from the queue while parked, or run to its end by a worker with the cap off): the slot would otherwise wake nobody.
   */
  const promote = async (member: string): Promise<'promoted' | 'live' | 'gone'> => {
    const { queue: queueName, jobId } = parseSlotMember(member);
    const queue = opts.queueOf(queueName);
    if (!queue) {
      logger.warn({ queue: queueName, job_id: jobId }, 'parked job of a queue this process has no handle on: it comes back after its fallback delay');
      return 'live';
    }
    const job = await Job.fromId(queue, jobId);
    if (!job) return 'gone';
    try {
      await job.promote();
      return 'promoted';
    } catch {
      return ENDED_STATES.has(await job.getState()) ? 'gone' : 'live';
    }
  };
  /**
   * Promotes `member`, and while the popped job cannot use the free slot, the owner's next parked job. `promoted` is told
   * when one of them was moved from `delayed` to `wait` (not when it was no longer delayed). Settles (never rejects) once
   * the chain has ended: a failure is logged.
   */
  const promoteQuietly = async (owner: string, member: string | null, promoted?: () => void): Promise<void> => {
    try {
      for (let m = member; m; m = await slots.wake(owner, m)) {
        const done = await promote(m);
        if (done === 'promoted') promoted?.();
        if (done !== 'gone') return;
      }
    } catch (err) {
      logger.warn({ err, member }, 'could not promote a parked job: it comes back after its fallback delay');
    }
  };
  return {
    /**
     * Parks `job` (which found `owner` at its cap: `refused`, the answer of its TenantSlots.take) and
     * throws DelayedError. `parked` is told how often the job has been parked and its delay, once it is
     * delayed (for the caller's metric and log): the fallback delay, or less up to `refused.wakeBy` for a
     * job watching the leases held (undefined for one that does not). Its place in the parked set is its
     * first park's `refusedAt`, Redis's clock, kept in its data (`parked_at`) for its later parks: the
     * worker hosts' clocks, which may disagree by seconds, play no part in the order.
     * `first` (a webhook test event, ADR 0013) parks it ahead of the jobs parked before it: promoted at
     * the owner's next release rather than after them. Given its `rank` and the owner's `cap` (the webhook
     * deliveries and the run jobs' worker host pass them), a job behind the owner's `cap` earliest parked gets a fallback delay scaled by
     * its place (rankedDelayMs): it waits for a promotion, and a long parked set does not keep coming back.
     */
    async park(job: Job, token: string | undefined, owner: string, member: string, parked: (info: { parks: number; delayMs: number }) => void, refused: { refusedAt: number; wakeBy?: number | undefined; rank?: number; cap?: number }, first = false): Promise<never> {
      const { wakeBy, refusedAt } = refused;
      const d = job.data as ParkedJobData;
      const parks = (d.parks ?? 0) + 1;
      const parkedAt = first ? PARKED_FIRST : (d.parked_at ?? refusedAt);
      const now = Date.now();
      const fallbackMs = (opts.parkDelayMs ?? parkDelayMs)(parks);
      const rank = first ? 0 : refused.rank;
      // No later than `wakeBy` (TenantSlots.take: when the earliest lease held lapses), if it watches the leases.
      const until = Math.min(now + (rank !== undefined && refused.cap !== undefined ? rankedDelayMs(fallbackMs, rank, refused.cap) : fallbackMs), wakeBy ?? Infinity);
      const delayMs = Math.max(0, until - now);
      await job.updateData({ ...(job.data as object), parks, parked_at: parkedAt });
      await job.moveToDelayed(until, token);
      parked({ parks, delayMs });
      try {
        // A slot freed between the acquire and the park found nothing parked to promote: promote now.
        void promoteQuietly(owner, await slots.park(owner, member, parkedAt));
      } catch (err) {
        // The job is delayed already: unrecorded, it comes back on its fallback delay instead of a promotion.
        logger.warn({ err, [ownerField]: owner, job_id: job.id }, 'could not record a parked job; it comes back after its fallback delay');
      }
      throw new DelayedError();
    },
    /** Gives `member`'s slot back and promotes the owner's earliest parked job; not awaited by the job's end. */
    give(owner: string, member: string): void {
      slots.release(owner, member).then(
        (next) => void promoteQuietly(owner, next),
        (err: unknown) => logger.warn({ err, [ownerField]: owner }, `could not give ${noun} slot back; it lapses with its lease`),
      );
    },
    /**
     * Promotes the owner's earliest parked job when a slot is free; not awaited. For a job that was
     * promoted into a free slot but ends without taking it (its delivery settled or its endpoint
     * disabled meanwhile): the slot would otherwise wake nobody, and the owner's next parked job would
     * wait out its fallback delay.
     */
    wake(owner: string): void {
      slots.wake(owner).then(
        (next) => void promoteQuietly(owner, next),
        (err: unknown) => logger.warn({ err, [ownerField]: owner }, 'could not promote a parked job: it comes back after its fallback delay'),
      );
    },
    /**
     * Makes the promotions lost (ADR 0012, *Lost promotions*): a popped job whose promoter died before promoting it, and the
     * earliest parked of an owner whose slots are free with nobody left to release one. Called on a timer; resolves once
     * the promotions have settled (each popped member's, with the wake chain after a job gone), so the worker host's next
     * look does not overlap this one and its stop waits for it: a member popped and left unpromoted would stay a
     * promotion pending, redone by another worker after its grace and counted as a worker's death (how="redo").
     * `recovered` is told of each job so moved from `delayed` to `wait` (ADR 0012: the
     * dealix_lost_promotions_recovered_total counter), not of a redo whose job was waiting already.
     */
    async recover(recovered?: (how: LostPromotion) => void): Promise<void> {
      const found = await slots.recover();
      await Promise.all(found.map(({ owner, member, how }) => promoteQuietly(owner, member, recovered && (() => recovered(how)))));
    },
  };
}
