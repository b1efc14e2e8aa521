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

  /** The endpoint's waiting members and their turns (µs, Redis's clock), in turn order. */
  async function turnsOf(rates: EndpointRates, endpoint: string): Promise<Map<string, number>> {
    const flat = await redis.zrange(rates.waitingKey(endpoint), '0', '-1', 'WITHSCORES');
    const turns = new Map<string, number>();
    for (let i = 0; i < flat.length; i += 2) turns.set(flat[i]!, Number(flat[i + 1]));
    return turns;
  }

  it("a test event's take (takeFirst) takes the earliest turn a waiting job holds, and that job a fresh turn at the tail; the set of turns is the one a plain take would have made", async () => {
    const rates = new EndpointRates(redis, prefix);
    const endpoint = randomUUID();
    // 1/s: the first goes, the other five reserve turns a second apart (the calls take ms, far less than a turn).
    const backlog = ['q:b0', 'q:b1', 'q:b2', 'q:b3', 'q:b4', 'q:b5'];
    for (const m of backlog) await rates.take(endpoint, m, 1);
    const before = await turnsOf(rates, endpoint);
    expect([...before.keys()]).toEqual(backlog.slice(1));
    const head = before.get('q:b1')!;
    const tail = before.get('q:b5')!;

    const first = await rates.takeFirst(endpoint, 'q:test', 1);
    // The test holds the turn b1 held, the next one; b1 holds a fresh one at the tail, one interval after b5's. No other turn moved.
    expect(first.displaced).toBe('q:b1');
    expect(first.waitMs).toBeGreaterThan(0);
    const after = await turnsOf(rates, endpoint);
    expect([...after.keys()]).toEqual(['q:test', 'q:b2', 'q:b3', 'q:b4', 'q:b5', 'q:b1']);
    expect(after.get('q:test')).toBe(head);
    expect(after.get('q:b1')).toBe(tail + 1_000_000);
    for (const m of ['q:b2', 'q:b3', 'q:b4', 'q:b5']) expect(after.get(m)).toBe(before.get(m));
    // b1, back at its old turn, waits for its new one; a later job (a resend, an ordinary event) queues behind it, FIFO.
    expect(await rates.take(endpoint, 'q:b1', 1)).toBeGreaterThan(first.waitMs + 4000);
    expect(await rates.take(endpoint, 'q:late', 1)).toBeGreaterThan(0);
    expect((await turnsOf(rates, endpoint)).get('q:late')).toBe(tail + 2_000_000);
    // The test back (early, here): it keeps its turn and displaces nobody else.
    expect(await rates.takeFirst(endpoint, 'q:test', 1)).toMatchObject({ displaced: null });
    expect((await turnsOf(rates, endpoint)).get('q:test')).toBe(head);
  });

  it('with nobody waiting, a test event takes a turn as any job does (now, or the next one free), displacing nobody', async () => {
    const rates = new EndpointRates(redis, prefix);
    const endpoint = randomUUID();
    expect(await rates.takeFirst(endpoint, 'q:test-1', 1)).toEqual({ waitMs: 0, displaced: null });
    expect(await redis.exists(rates.waitingKey(endpoint))).toBe(0);
    const next = await rates.takeFirst(endpoint, 'q:test-2', 1);
    expect(next.displaced).toBeNull();
    expect(next.waitMs).toBeGreaterThan(0);
    expect([...(await turnsOf(rates, endpoint)).keys()]).toEqual(['q:test-2']);
  });

  it("let go in turn order (as BullMQ brings delayed jobs back), a test event goes before every job waiting when it came, each job goes once, and consecutive let-gos (the script's own `last`) stay an interval apart", async () => {
    const rates = new EndpointRates(redis, prefix);
    const endpoint = randomUUID();
    const perSecond = 10;
    const intervalUs = 100_000;
    const backlog = Array.from({ length: 8 }, (_, i) => `q:b${i}`);
    const letGo: { member: string; at: number }[] = [];
    const lastOf = async () => Number(await redis.hget(rates.stateKey(endpoint), 'last'));
    for (const m of backlog) if ((await rates.take(endpoint, m, perSecond)) === 0) letGo.push({ member: m, at: await lastOf() });
    const waitingAtTest = [...(await turnsOf(rates, endpoint)).keys()];
    expect(waitingAtTest.length).toBeGreaterThanOrEqual(5);
    const first = await rates.takeFirst(endpoint, 'q:test', perSecond);
    if (first.waitMs === 0) letGo.push({ member: 'q:test', at: await lastOf() });
    // Each round, the members still waiting come back in turn order, as their delayed jobs would; one let go leaves the set.
    await waitFor(
      async () => {
        for (const m of (await turnsOf(rates, endpoint)).keys()) if ((await rates.take(endpoint, m, perSecond)) === 0) letGo.push({ member: m, at: await lastOf() });
        return (await redis.zcard(rates.waitingKey(endpoint))) === 0 || undefined;
      },
      { timeoutMs: 15_000, intervalMs: 5, what: 'every waiting member to be let go' },
    );
    const order = letGo.map((l) => l.member);
    // Each once: the backlog and the test.
    expect([...order].sort()).toEqual([...backlog, 'q:test'].sort());
    // The test went before every job that was waiting for a turn when it took its own (with a plain take, after them all).
    const testAt = order.indexOf('q:test');
    for (const m of waitingAtTest) expect(order.indexOf(m), `${m} vs the test event`).toBeGreaterThan(testAt);
    // Never two let go closer than the interval, by Redis's clock.
    for (let i = 1; i < letGo.length; i++) expect(letGo[i]!.at - letGo[i - 1]!.at, `let-gos ${i - 1} and ${i}`).toBeGreaterThanOrEqual(intervalUs);
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
