/**
 * SlidingBudget (src/platform/http/rate-window.ts), behind WEBHOOK_RESEND_MAX_PER_HOUR (resend.ts), against
 * the real Redis with a clock the test moves: a budget of N units in any sliding window, spent many units
 * at a time, what is unused given back.
 */
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { randomBytes, randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { SlidingBudget } from '../../src/platform/http/rate-window.ts';
import { TEST_REDIS_URL } from '../helpers/env.ts';

const redis = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
const prefix = `t${randomBytes(5).toString('hex')}`;
const WINDOW = 3_600_000;

describe('sliding budget (Redis script)', () => {
  afterEach(async () => {
    const keys = await redis.keys(`${prefix}:*`);
    if (keys.length) await redis.del(...keys);
  });
  afterAll(() => redis.disconnect());

  it('grants what is left up to what is asked, none past the budget in any window; frees each grant a window after it, not at a fixed boundary', async () => {
    let now = 1_000_000_000_000;
    const budget = new SlidingBudget(redis, prefix, WINDOW, () => now);
    const subject = randomUUID();
    expect((await budget.take(subject, 3, 10)).granted).toBe(3);
    now += 10 * 60_000;
    expect((await budget.take(subject, 1000, 10)).granted).toBe(7);
    now += 10 * 60_000;
    const refused = await budget.take(subject, 1, 10);
    expect(refused.granted).toBe(0);
    // The oldest grant (3) leaves the window 40 minutes from now.
    expect(refused.retryAfter).toBe(40 * 60);
    // Another subject has its own.
    expect((await budget.take(randomUUID(), 10, 10)).granted).toBe(10);
    now += 40 * 60_000;
    // The first grant left: 3 free, not 10 (the second is still in the window).
    expect((await budget.take(subject, 1000, 10)).granted).toBe(3);
    expect((await budget.take(subject, 1, 10)).granted).toBe(0);
    now += 10 * 60_000;
    expect((await budget.take(subject, 1000, 10)).granted).toBe(7);
  });

  it('keep gives back what a grant did not use, once: a partial keep then a keep of 0 (a rollback) gives back the rest and nothing more', async () => {
    const now = 1_000_000_000_000;
    const budget = new SlidingBudget(redis, prefix, WINDOW, () => now);
    const subject = randomUUID();
    const other = await budget.take(subject, 4, 10);
    const take = await budget.take(subject, 6, 10);
    expect(take.granted).toBe(6);
    await budget.keep(take, 2);
    await budget.keep(take, 2);
    const probe = await budget.take(subject, 1000, 10);
    expect(probe.granted).toBe(4);
    await budget.keep(probe, 0);
    await budget.keep(take, 0);
    await budget.keep(take, 0);
    // Only `other` (4) holds budget now: 6 left, never more however often the takes were given back.
    expect((await budget.take(subject, 1000, 10)).granted).toBe(6);
    expect(other.granted).toBe(4);
  });

  it("a partial keep of a subject's only entry leaves its key expiring with the window (not a key kept for good)", async () => {
    const budget = new SlidingBudget(redis, prefix, WINDOW);
    const subject = randomUUID();
    const take = await budget.take(subject, 6, 10);
    await budget.keep(take, 2);
    const ttl = await redis.pttl(`${prefix}:budget:${subject}`);
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(WINDOW + 1000);
    // Still counted: 2 held, 8 left.
    expect((await budget.take(subject, 1000, 10)).granted).toBe(8);
  });

  it('keeps a running total beside the set, so a take reads only the entries leaving the window, not every one (a refused take at a full window of single resends read 5,000)', async () => {
    let now = 1_000_000_000_000;
    const budget = new SlidingBudget(redis, prefix, WINDOW, () => now);
    const subject = randomUUID();
    const key = `${prefix}:budget:${subject}`;
    const totalKey = `${prefix}:budget-total:${subject}`;
    const total = async () => Number(await redis.get(totalKey));
    for (let i = 0; i < 5; i++) {
      await budget.take(subject, 1, 100);
      now += 60_000;
    }
    const bulk = await budget.take(subject, 40, 100);
    await budget.keep(bulk, 15);
    expect(await total()).toBe(20);
    // The total expires with the set.
    const ttl = await redis.pttl(totalKey);
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(WINDOW + 1000);
    // Three single takes leave the window: the total drops by them, and a refusal changes nothing.
    now += WINDOW - 3 * 60_000;
    expect((await budget.take(subject, 1000, 100)).granted).toBe(100 - 17);
    expect(await total()).toBe(100);
    expect((await budget.take(subject, 1, 100)).granted).toBe(0);
    expect(await total()).toBe(100);
    // A total lost (or from before it was kept) is counted again from the set, once.
    await redis.del(totalKey);
    now += 60_000;
    expect((await budget.take(subject, 1000, 100)).granted).toBe(1);
    expect(await total()).toBe(100);
    // Everything left the window: the set and its total are gone.
    now += 2 * WINDOW;
    const none = await budget.take(subject, 0, 100);
    expect(none.granted).toBe(0);
    expect(await redis.exists(key, totalKey)).toBe(0);
  });

  it('concurrent takes never grant more than the budget between them (one script each, atomic)', async () => {
    const budget = new SlidingBudget(redis, prefix, WINDOW);
    const subject = randomUUID();
    const takes = await Promise.all(Array.from({ length: 20 }, () => budget.take(subject, 3, 25)));
    expect(takes.reduce((n, t) => n + t.granted, 0)).toBe(25);
    // The key expires with the window: nothing kept for good.
    const ttl = await redis.pttl(`${prefix}:budget:${subject}`);
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(WINDOW + 1000);
  });
});
