import type { Redis } from 'ioredis';

/** One hit on a window counter: INCR, and the window's expiry set by its first hit. One command. */
const RATE_HIT = `local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n`;

type RateRedis = Redis & { dealixRateHit(key: string, ttlMs: number): Promise<number> };

/**
 * Fixed-window counters in Redis, shared by every API process: `hit` counts one event in the current
 * window of `windowMs` and returns the window's count; `count` reads it without counting. A script
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
  async hit(subject: string): Promise<{ count: number; retryAfter: number }> {
    const { key, retryAfter } = this.current(subject);
    return { count: Number(await this.redis.dealixRateHit(key, this.windowMs + 1_000)), retryAfter };
  }

  /** The events counted for `subject` in the current window, and the seconds until it ends. */
  async count(subject: string): Promise<{ count: number; retryAfter: number }> {
    const { key, retryAfter } = this.current(subject);
    return { count: Number((await this.redis.get(key)) ?? 0), retryAfter };
  }
}
