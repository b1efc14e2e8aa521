/**
 * The scripts behind an endpoint's `rate_limit_per_second` (src/platform/webhooks/rate-limit.ts, ADR 0013,
 * *Rate limits*) against the real Redis: what the keys keep, and what they let go of.
 */
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { randomBytes, randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { EndpointRates } from '../../src/platform/webhooks/rate-limit.ts';
import { TEST_REDIS_URL } from '../helpers/env.ts';
import { waitFor } from '../helpers/poll.ts';

const redis = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
const prefix = `t${randomBytes(5).toString('hex')}`;

describe('endpoint rate limits (Redis scripts)', () => {
  afterEach(async () => {
    const keys = await redis.keys(`${prefix}:*`);
    if (keys.length) await redis.del(...keys);
  });
  afterAll(() => redis.disconnect());

  it("drops a turn its job never came back for once it is `keep` past, though the endpoint's waiting set stays busy and never expires", async () => {
    const keepMs = 1000;
    const rates = new EndpointRates(redis, prefix, { keepMs });
    const endpoint = randomUUID();
    // 20/s: turns 50 ms apart. Sent together (one write), the second reserves a turn whatever the first did.
    const both = (go: string, wait: string) => Promise.all([rates.take(endpoint, go, 20), rates.take(endpoint, wait, 20)]);
    const [, gone] = await both('q:first', 'q:gone');
    // Its job never comes back for it (its endpoint disabled meanwhile, its delivery gone, the job removed).
    expect(gone).toBeGreaterThan(0);
    expect(await rates.holdsTurn(endpoint, 'q:gone')).toBe(true);
    // The endpoint stays busy: every round a job reserves a turn, so the set is written (its expiry moved on) again and again.
    let round = 0;
    await waitFor(
      async () => {
        expect(await redis.exists(rates.waitingKey(endpoint)), 'the waiting set, written every round, never expires').toBe(1);
        round++;
        const [, waits] = await both(`q:go-${round}`, `q:wait-${round}`);
        expect(waits).toBeGreaterThan(0);
        return !(await rates.holdsTurn(endpoint, 'q:gone')) || undefined;
      },
      { timeoutMs: 15_000, intervalMs: 100, what: 'the turn nobody came back for to be dropped' },
    );
    // Dropped by the script: the set is there, with the turn just reserved; none kept that is more than `keep` past (and a second of slack).
    expect(await rates.holdsTurn(endpoint, `q:wait-${round}`)).toBe(true);
    const [s, us] = await redis.time();
    const nowUs = Number(s) * 1e6 + Number(us);
    const turns = (await redis.zrange(rates.waitingKey(endpoint), '0', '-1', 'WITHSCORES')).filter((_, i) => i % 2 === 1).map(Number);
    for (const t of turns) expect(nowUs - t).toBeLessThan((keepMs + 1000) * 1000);
  });

  it('a recall forgets the turns but keeps the last POST; a recall of a deleted endpoint drops both keys', async () => {
    const rates = new EndpointRates(redis, prefix);
    const endpoint = randomUUID();
    expect(await rates.take(endpoint, 'q:a', 1)).toBe(0);
    expect(await rates.take(endpoint, 'q:b', 1)).toBeGreaterThan(0);
    expect(await rates.recall(endpoint)).toEqual(['q:b']);
    expect(await redis.exists(rates.waitingKey(endpoint))).toBe(0);
    expect(await redis.hkeys(rates.stateKey(endpoint))).toEqual(['last']);
    // Spaced from the last POST still: a second has not passed.
    expect(await rates.take(endpoint, 'q:b', 1)).toBeGreaterThan(0);
    expect(await rates.recall(endpoint, true)).toEqual(['q:b']);
    expect(await redis.exists(rates.stateKey(endpoint), rates.waitingKey(endpoint))).toBe(0);
  });
});
