import type { Redis } from 'ioredis';

/*
 * Per-tenant slots for run jobs (WORKER_MAX_ACTIVE_RUNS_PER_TENANT, ADR 0012), in two sorted sets per
 * tenant shared by every worker process:
 *   <prefix>:tenant-slots:<tenant>   the run jobs executing now, scored by lease expiry (Redis time, ms);
 *   <prefix>:tenant-parked:<tenant>  the run jobs parked (delayed) for want of a slot, scored by when
 *                                    each was first parked: the earliest is promoted first.
 * A member is `<queue>:<job id>` (BullMQ job ids have no ':'). Each script reads Redis's own clock,
 * so leases do not depend on the worker hosts' clocks agreeing.
 */

/*
 * The slots key expires with its last lease: a write sets its expiry to its own lease only when that
 * extends it, so a shorter lease (a worker with a shorter WORKER_LOCK_DURATION) never cuts a longer
 * one held by another worker short (PTTL is -1 without an expiry, -2 without the key).
 */

/** Redis's clock in ms; the writes that follow replicate as effects (Redis 7 always does; older ones are told to). */
const NOW = `if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
`;

/**
 * KEYS: slots, parked. ARGV: member, cap, lease ms. Drops lapsed leases; a member that holds a slot
 * renews it, another takes one when fewer than `cap` are held. 1 when the member holds a slot after it.
 */
const ACQUIRE = `${NOW}
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 1
end
return 0`;

/** KEYS: slots. ARGV: member, lease ms. Extends the member's lease (re-adds it if it lapsed: the job is still running). */
const RENEW = `${NOW}
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1`;

/**
 * KEYS: slots, parked. ARGV: member, cap, parked at (ms, the order of promotion), parked set ttl ms.
 * Records the member as parked; when a slot is free by now (one was released between the member's
 * acquire and its park), pops the earliest parked member for the caller to promote, else false.
 */
const PARK = `${NOW}
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  local p = redis.call('ZPOPMIN', KEYS[2])
  if p[1] then return p[1] end
end
return false`;

/**
 * KEYS: slots, parked. ARGV: member, cap. Gives the member's slot back; when a slot is free, pops the
 * earliest parked member for the caller to promote, else false.
 */
const RELEASE = `redis.call('ZREM', KEYS[1], ARGV[1])
${NOW}
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  local p = redis.call('ZPOPMIN', KEYS[2])
  if p[1] then return p[1] end
end
return false`;

/**
 * KEYS: slots, parked. ARGV: cap. When a slot is free, pops the earliest parked member for the caller to
 * promote, else false: the next one, after a popped member whose job was gone could not use the slot.
 */
const WAKE = `${NOW}
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  local p = redis.call('ZPOPMIN', KEYS[2])
  if p[1] then return p[1] end
end
return false`;

type SlotRedis = Redis & {
  dealixSlotAcquire(slots: string, parked: string, member: string, cap: number, leaseMs: number): Promise<number>;
  dealixSlotRenew(slots: string, member: string, leaseMs: number): Promise<number>;
  dealixSlotPark(slots: string, parked: string, member: string, cap: number, parkedAt: number, ttlMs: number): Promise<string | null>;
  dealixSlotRelease(slots: string, parked: string, member: string, cap: number): Promise<string | null>;
  dealixSlotWake(slots: string, parked: string, cap: number): Promise<string | null>;
};

/** A parked job's fallback delay: 30–60 s on its first park, 60–120 s after (if its promotion was lost, it comes back on its own). */
export function parkDelayMs(parks: number): number {
  const base = parks <= 1 ? 30_000 : 60_000;
  return Math.round(base * (1 + Math.random()));
}

/** How long an emptied parked set is kept: longer than any fallback delay, so a live parked job's entry outlives it. */
const PARKED_TTL_MS = 10 * 60_000;

/** A run job's member in the sets: its queue and id. */
export const slotMember = (queue: string, jobId: string) => `${queue}:${jobId}`;

/** The queue and job id of a member. */
export function parseSlotMember(member: string): { queue: string; jobId: string } {
  const at = member.lastIndexOf(':');
  return { queue: member.slice(0, at), jobId: member.slice(at + 1) };
}

export interface TenantSlotsOptions {
  prefix: string;
  /** Run jobs one tenant may execute at once, over every workflow queue and worker process (at least 1). */
  cap: number;
  /** How long a slot is held without renewal: a SIGKILLed holder's slot lapses after it. */
  leaseMs: number;
}

/**
 * The Redis side of the per-tenant cap: one script (EVALSHA, loaded once) per acquire, renewal, park
 * and release. The worker host (worker-host.ts) decides when to call them.
 */
export class TenantSlots {
  private readonly redis: SlotRedis;
  readonly cap: number;
  readonly leaseMs: number;
  private readonly prefix: string;

  constructor(redis: Redis, opts: TenantSlotsOptions) {
    if (!Number.isInteger(opts.cap) || opts.cap < 1) throw new Error(`a tenant's slots must be at least 1, not ${opts.cap}`);
    this.cap = opts.cap;
    this.leaseMs = opts.leaseMs;
    this.prefix = opts.prefix;
    if (!('dealixSlotAcquire' in redis)) {
      redis.defineCommand('dealixSlotAcquire', { numberOfKeys: 2, lua: ACQUIRE });
      redis.defineCommand('dealixSlotRenew', { numberOfKeys: 1, lua: RENEW });
      redis.defineCommand('dealixSlotPark', { numberOfKeys: 2, lua: PARK });
      redis.defineCommand('dealixSlotRelease', { numberOfKeys: 2, lua: RELEASE });
      redis.defineCommand('dealixSlotWake', { numberOfKeys: 2, lua: WAKE });
    }
    this.redis = redis as SlotRedis;
  }

  slotsKey(tenant: string): string {
    return `${this.prefix}:tenant-slots:${tenant}`;
  }

  parkedKey(tenant: string): string {
    return `${this.prefix}:tenant-parked:${tenant}`;
  }

  /** Takes (or renews) a slot for `member`; false when the tenant holds `cap` others. */
  async acquire(tenant: string, member: string): Promise<boolean> {
    return (await this.redis.dealixSlotAcquire(this.slotsKey(tenant), this.parkedKey(tenant), member, this.cap, this.leaseMs)) === 1;
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

  /** Records `member` (already delayed) as parked since `parkedAt`; the member to promote when a slot is free now, else null. */
  async park(tenant: string, member: string, parkedAt: number): Promise<string | null> {
    return this.redis.dealixSlotPark(this.slotsKey(tenant), this.parkedKey(tenant), member, this.cap, parkedAt, PARKED_TTL_MS);
  }

  /** Gives `member`'s slot back; the tenant's earliest parked member to promote when a slot is free, else null. */
  async release(tenant: string, member: string): Promise<string | null> {
    return this.redis.dealixSlotRelease(this.slotsKey(tenant), this.parkedKey(tenant), member, this.cap);
  }

  /** The tenant's earliest parked member to promote when a slot is free, else null (no slot changes hands). */
  async wake(tenant: string): Promise<string | null> {
    return this.redis.dealixSlotWake(this.slotsKey(tenant), this.parkedKey(tenant), this.cap);
  }
}
