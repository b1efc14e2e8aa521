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
