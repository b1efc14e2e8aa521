import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';

/** One hit on a window counter: INCR, and the window's expiry set by its first hit. One command. */
const RATE_HIT = `local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n`;

/** Takes one hit back from a window counter, if the window still exists (never creates a key without expiry). */
const RATE_UNHIT = `if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECR', KEYS[1]) end
return 0`;

type RateRedis = Redis & { dealixRateHit(key: string, ttlMs: number): Promise<number>; dealixRateUnhit(key: string): Promise<number> };

/** One counted hit, for `unhit`: the window it was counted in. */
export interface RateHit {
  count: number;
  retryAfter: number;
  key: string;
}

/**
 * Fixed-window counters in Redis, shared by every API process: `hit` counts one event in the current
 * window of `windowMs` and returns the window's count; `unhit` takes one back. A script
 * (EVALSHA, loaded once) instead of MULTI/INCR/PEXPIRE/EXEC: one command per hit.
 */
export class RateWindow {
  private readonly redis: RateRedis;
  private readonly keyPrefix: string;
  readonly windowMs: number;
  constructor(redis: Redis, keyPrefix: string, windowMs: number) {
    this.keyPrefix = keyPrefix;
    this.windowMs = windowMs;
    if (!('dealixRateHit' in redis)) redis.defineCommand('dealixRateHit', { numberOfKeys: 1, lua: RATE_HIT });
    if (!('dealixRateUnhit' in redis)) redis.defineCommand('dealixRateUnhit', { numberOfKeys: 1, lua: RATE_UNHIT });
    this.redis = redis as RateRedis;
  }

  private current(subject: string): { key: string; retryAfter: number } {
    const window = Math.floor(Date.now() / this.windowMs);
    return {
      key: `${this.keyPrefix}:${subject}:${window}`,
      retryAfter: Math.max(1, Math.ceil(((window + 1) * this.windowMs - Date.now()) / 1000)),
    };
  }

  /** Counts one event for `subject`; its window's count so far and the seconds until the window ends. */
  async hit(subject: string): Promise<RateHit> {
    const { key, retryAfter } = this.current(subject);
    return { count: Number(await this.redis.dealixRateHit(key, this.windowMs + 1_000)), retryAfter, key };
  }

  /**
   * Takes back a hit that turned out not to count (counted first, so that concurrent events each see
   * their own count): in the window it was counted in, even if the next one has begun since.
   */
  async unhit(hit: RateHit): Promise<void> {
    await this.redis.dealixRateUnhit(hit.key);
  }
}

/**
 * What the sliding windows share: a sorted set per subject under `keyPrefix`, the window, the clock the
 * entries are timed by (`now`: tests move it), and their scripts (a script, or one with its number of keys:
 * one unless it says), defined once per connection.
 */
abstract class SlidingSets<R extends Redis> {
  protected readonly redis: R;
  protected readonly keyPrefix: string;
  readonly windowMs: number;
  protected readonly now: () => number;
  constructor(redis: Redis, keyPrefix: string, windowMs: number, now: () => number, scripts: Record<string, string | { lua: string; numberOfKeys: number }>) {
    this.keyPrefix = keyPrefix;
    this.windowMs = windowMs;
    this.now = now;
    for (const [name, script] of Object.entries(scripts)) if (!(name in redis)) redis.defineCommand(name, typeof script === 'string' ? { numberOfKeys: 1, lua: script } : script);
    this.redis = redis as R;
  }
}

/**
 * One attempt in a sliding window: drops the subject's attempts `windowMs` old or older, adds this one
 * (scored by its time), keeps the set no longer than the window, and answers the count with the oldest
 * attempt's time. One command (the script), atomic, whatever number of API processes count at once.
 */
const SLIDING_HIT = `local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window + 1000)
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {redis.call('ZCARD', KEYS[1]), oldest[2]}`;

type SlidingRedis = Redis & {
  dealixSlidingHit(key: string, now: number, windowMs: number, member: string): Promise<[number, string]>;
};

/** One counted attempt, for `unhit`: its set and its own member in it. */
export interface SlidingHit {
  count: number;
  retryAfter: number;
  key: string;
  member: string;
}

/**
 * A sliding window of attempts per subject in Redis (a sorted set of their times), shared by every API
 * process: `hit` counts one attempt and returns how many the last `windowMs` hold, this one included;
 * `unhit` takes that one attempt back, whenever. Exact where a fixed window is not: a limit of N "in 15
 * minutes" on fixed quarter hours let N attempts just before a boundary and N more just after it. A
 * set holds at most the attempts a caller keeps counted (the failures) plus those in flight, and
 * expires with the window. `now` is the clock the attempts are timed by (tests move it).
 */
export class SlidingRateWindow extends SlidingSets<SlidingRedis> {
  constructor(redis: Redis, keyPrefix: string, windowMs: number, now: () => number = Date.now) {
    super(redis, keyPrefix, windowMs, now, { dealixSlidingHit: SLIDING_HIT });
  }

  /** Counts one attempt for `subject`: the attempts in the window so far, and the seconds until the oldest of them leaves it. */
  async hit(subject: string): Promise<SlidingHit> {
    // Not `<prefix>:<subject>`: the fixed windows of the release before kept strings at
    // `<prefix>:<subject>:<n>`, and an IPv6 subject holds colons; no key of theirs is one of these.
    const key = `${this.keyPrefix}:sliding:${subject}`;
    const now = this.now();
    const member = `${now}:${randomUUID()}`;
    const [count, oldest] = await this.redis.dealixSlidingHit(key, now, this.windowMs, member);
    return { count: Number(count), retryAfter: Math.max(1, Math.ceil((Number(oldest) + this.windowMs - now) / 1000)), key, member };
  }

  /** Takes back an attempt that turned out not to count (right, or refused unchecked). */
  async unhit(hit: SlidingHit): Promise<void> {
    await this.redis.zrem(hit.key, hit.member);
  }
}

/**
 * Takes up to `want` units from a subject's sliding budget of `max` per window: drops the entries a
 * window old or older (each member is `<time>:<uuid>:<units>`), and adds one entry for what it grants —
 * `min(want, what is left)`, nothing when nothing is left. Answers the grant and the oldest entry's time.
 * One command, atomic over every API process. What the window holds is a running total beside the set
 * (KEYS[2]), less the entries leaving it: a take reads only those, not the whole set — summing every
 * entry took ~16 ms of Redis (single-threaded: every queue waits) at a full window of 5,000 single
 * resends, on every resend and every refused one, so an admin could stall Redis with refused requests.
 * A total missing beside a set (lost, or not kept yet) is counted from the set once. The total expires
 * with the set; a set without expiry (never written so, but healed if found) is given the window's. A
 * refusal that changes nothing writes nothing (no AOF entry per 429).
 */
const BUDGET_TAKE = `local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local max = tonumber(ARGV[4])
local function units(members)
  local n = 0
  for _, m in ipairs(members) do n = n + tonumber(string.match(m, ':(%d+)$')) end
  return n
end
local used = 0
local changed = false
if redis.call('EXISTS', KEYS[1]) == 1 then
  used = tonumber(redis.call('GET', KEYS[2]))
  if not used then
    used = units(redis.call('ZRANGE', KEYS[1], 0, -1))
    changed = true
  end
  local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - window)
  if #gone > 0 then
    used = used - units(gone)
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
    changed = true
  end
end
local grant = math.max(0, math.min(want, max - used))
if grant > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[5] .. ':' .. grant)
  redis.call('PEXPIRE', KEYS[1], window + 1000)
  used = used + grant
  changed = true
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -1 then
  ttl = window + 1000
  redis.call('PEXPIRE', KEYS[1], ttl)
  changed = true
end
if ttl < 0 then
  redis.call('DEL', KEYS[2])
elseif changed then
  redis.call('SET', KEYS[2], used, 'PX', ttl)
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {grant, oldest[2] or tostring(now)}`;

/**
 * Keeps `ARGV[3]` units of an entry that granted more (0: drops it), at the entry's own time, and takes
 * what it gives back off the running total (DECRBY keeps its expiry). Only if the entry is still there:
 * a window already past is not written again. The kept entry is added before the old one is removed:
 * removing a set's only member deletes the key, and a ZADD after it would make a new key without expiry.
 */
const BUDGET_KEEP = `local score = redis.call('ZSCORE', KEYS[1], ARGV[1] .. ':' .. ARGV[2])
if not score then return 0 end
if tonumber(ARGV[3]) > 0 then redis.call('ZADD', KEYS[1], score, ARGV[1] .. ':' .. ARGV[3]) end
redis.call('ZREM', KEYS[1], ARGV[1] .. ':' .. ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
elseif redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('DECRBY', KEYS[2], tonumber(ARGV[2]) - tonumber(ARGV[3]))
end
return 1`;

type BudgetRedis = Redis & {
  dealixBudgetTake(key: string, totalKey: string, now: number, windowMs: number, want: number, max: number, member: string): Promise<[number, string]>;
  dealixBudgetKeep(key: string, totalKey: string, member: string, granted: number, keep: number): Promise<number>;
};

/** What a `take` granted, for `keep`: its set and its own entry in it. */
export interface BudgetTake {
  granted: number;
  /** Seconds until the oldest entry of the window leaves it (some budget frees): the Retry-After of a refusal. */
  retryAfter: number;
  key: string;
  /** The running total of the window beside the set (its own namespace: no subject's set is ever this key). */
  total: string;
  member: string;
  /** The units the entry holds now: `granted`, less what `keep` gave back. */
  held: number;
}

/**
 * A budget of `max` units per subject in any sliding window of `windowMs` (a sorted set of the grants,
 * each with its units, and their running total), shared by every API process: SlidingRateWindow weighted, for a request that
 * spends many units at once (a bulk resend: one per delivery). `take` grants what is left up to what
 * is asked; `keep` gives back what a grant did not use. Exact over any window, where a token bucket
 * lets twice its size through in one window (full, then refilled). `now` for tests.
 */
export class SlidingBudget extends SlidingSets<BudgetRedis> {
  constructor(redis: Redis, keyPrefix: string, windowMs: number, now: () => number = Date.now) {
    super(redis, keyPrefix, windowMs, now, { dealixBudgetTake: { lua: BUDGET_TAKE, numberOfKeys: 2 }, dealixBudgetKeep: { lua: BUDGET_KEEP, numberOfKeys: 2 } });
  }

  /** Takes up to `want` of `subject`'s `max` units in the window: `granted` is 0 when none is left. */
  async take(subject: string, want: number, max: number): Promise<BudgetTake> {
    const key = `${this.keyPrefix}:budget:${subject}`;
    const now = this.now();
    const member = `${now}:${randomUUID()}`;
    const total = `${this.keyPrefix}:budget-total:${subject}`;
    const [granted, oldest] = await this.redis.dealixBudgetTake(key, total, now, this.windowMs, want, max, member);
    return { granted: Number(granted), retryAfter: Math.max(1, Math.ceil((Number(oldest) + this.windowMs - now) / 1000)), key, total, member, held: Number(granted) };
  }

  /**
   * Keeps `units` of a take and gives the rest back (0: all of it); never more than it holds, so a second
   * call (a partial keep, then a rollback's 0) gives back only what the first kept.
   */
  async keep(take: BudgetTake, units: number): Promise<void> {
    const keep = Math.max(0, units);
    if (keep >= take.held) return;
    await this.redis.dealixBudgetKeep(take.key, take.total, take.member, take.held, keep);
    take.held = keep;
  }
}
