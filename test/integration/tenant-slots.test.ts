/**
 * The scripts behind WORKER_MAX_ACTIVE_RUNS_PER_TENANT and WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT (src/platform/durable/tenant-slots.ts) against
 * the real Redis: acquire, renew, release, lapse of a lease, and the order parked jobs are popped in.
 */
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { randomBytes, randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { PARKED_RANK_FACTOR_MAX, rankedDelayMs, TenantSlots, parseSlotMember, slotMember } from '../../src/platform/durable/tenant-slots.ts';
import { TEST_REDIS_URL } from '../helpers/env.ts';
import { waitFor } from '../helpers/poll.ts';

const redis = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
const prefix = `t${randomBytes(5).toString('hex')}`;
const LONG_LEASE = 60_000;

const redisNow = async () => {
  const [s, us] = await redis.time();
  return Number(s) * 1000 + Math.floor(Number(us) / 1000);
};

describe('tenant slots (Redis scripts)', () => {
  afterEach(async () => {
    const keys = await redis.keys(`${prefix}:*`);
    if (keys.length) await redis.del(...keys);
  });
  afterAll(() => redis.disconnect());

  it('acquires up to the cap, renews a slot already held, refuses past the cap, and a release frees one', async () => {
    const slots = new TenantSlots(redis, { prefix, cap: 2, leaseMs: LONG_LEASE });
    const tenant = randomUUID();
    const before = await redisNow();
    expect(await slots.acquire(tenant, 'q:a')).toBe(true);
    expect(await slots.acquire(tenant, 'q:b')).toBe(true);
    expect(await slots.acquire(tenant, 'q:c')).toBe(false);
    // A job that holds a slot (a re-delivery of it, say) keeps it at the cap.
    expect(await slots.acquire(tenant, 'q:a')).toBe(true);
    expect((await redis.zrange(slots.slotsKey(tenant), '0', '-1')).sort()).toEqual(['q:a', 'q:b']);
    // Scored by lease expiry on Redis's clock; the set itself expires with its last lease.
    const after = await redisNow();
    const score = Number(await redis.zscore(slots.slotsKey(tenant), 'q:a'));
    expect(score).toBeGreaterThanOrEqual(before + LONG_LEASE);
    expect(score).toBeLessThanOrEqual(after + LONG_LEASE);
    expect(await redis.pttl(slots.slotsKey(tenant))).toBeGreaterThan(0);
    // Another tenant's slots are its own.
    expect(await slots.acquire(randomUUID(), 'q:c')).toBe(true);

    expect(await slots.release(tenant, 'q:a')).toBeNull();
    expect(await slots.acquire(tenant, 'q:c')).toBe(true);
    expect((await redis.zrange(slots.slotsKey(tenant), '0', '-1')).sort()).toEqual(['q:b', 'q:c']);
  });

  it('renewal moves a lease on, and puts back a slot that lapsed while its job still ran', async () => {
    const slots = new TenantSlots(redis, { prefix, cap: 1, leaseMs: LONG_LEASE });
    const tenant = randomUUID();
    await slots.acquire(tenant, 'q:a');
    const first = Number(await redis.zscore(slots.slotsKey(tenant), 'q:a'));
    await waitFor(async () => (await redisNow()) > first - LONG_LEASE, { what: "Redis's clock to move on" });
    await slots.renew([{ tenant, member: 'q:a' }]);
    expect(Number(await redis.zscore(slots.slotsKey(tenant), 'q:a'))).toBeGreaterThan(first);
    await redis.zrem(slots.slotsKey(tenant), 'q:a');
    await slots.renew([{ tenant, member: 'q:a' }]);
    expect(await redis.zrange(slots.slotsKey(tenant), '0', '-1')).toEqual(['q:a']);
  });

  it('a lease that lapsed (its holder died) frees the slot for the next acquire, while the other holders keep theirs', async () => {
    const shortLease = new TenantSlots(redis, { prefix, cap: 2, leaseMs: 300 });
    const slots = new TenantSlots(redis, { prefix, cap: 2, leaseMs: LONG_LEASE });
    const tenant = randomUUID();
    expect(await shortLease.acquire(tenant, 'q:dead')).toBe(true);
    // A live holder keeps the set (and its expiry) alive: only the lapsed member may go.
    expect(await slots.acquire(tenant, 'q:live')).toBe(true);
    expect(await slots.acquire(tenant, 'q:next')).toBe(false);
    const expiry = Number(await redis.zscore(slots.slotsKey(tenant), 'q:dead'));
    // Nobody renews q:dead: once Redis's clock passes its expiry, its slot is free.
    await waitFor(async () => (await redisNow()) > expiry, { timeoutMs: 10_000, what: 'the lease to lapse' });
    expect(await slots.acquire(tenant, 'q:next')).toBe(true);
    expect((await redis.zrange(slots.slotsKey(tenant), '0', '-1')).sort()).toEqual(['q:live', 'q:next']);
  });

  it('a shorter lease (a worker with a shorter WORKER_LOCK_DURATION) does not cut the set\'s expiry short of a longer lease held', async () => {
    const long = new TenantSlots(redis, { prefix, cap: 3, leaseMs: LONG_LEASE });
    const short = new TenantSlots(redis, { prefix, cap: 3, leaseMs: 300 });
    const tenant = randomUUID();
    expect(await long.acquire(tenant, 'q:long')).toBe(true);
    expect(await short.acquire(tenant, 'q:short')).toBe(true);
    await short.renew([{ tenant, member: 'q:short' }]);
    const shortExpiry = Number(await redis.zscore(short.slotsKey(tenant), 'q:short'));
    await waitFor(async () => (await redisNow()) > shortExpiry, { timeoutMs: 10_000, what: 'the short lease to lapse' });
    // The long lease is still held: its slot (and the set) must outlive the short one.
    expect(await redis.zscore(long.slotsKey(tenant), 'q:long')).not.toBeNull();
    expect(await short.acquire(tenant, 'q:next')).toBe(true);
    expect((await redis.zrange(long.slotsKey(tenant), '0', '-1')).sort()).toEqual(['q:long', 'q:next']);
  });

  it('parked jobs are popped earliest first, one per slot given back, and only while a slot is free', async () => {
    const slots = new TenantSlots(redis, { prefix, cap: 2, leaseMs: LONG_LEASE });
    const tenant = randomUUID();
    await slots.acquire(tenant, 'q:h1');
    await slots.acquire(tenant, 'q:h2');
    // Parked out of order: the score (first park time) decides, not the order of parking.
    expect(await slots.park(tenant, 'q:p3', 3_000)).toBeNull();
    expect(await slots.park(tenant, 'q:p1', 1_000)).toBeNull();
    expect(await slots.park(tenant, 'q:p2', 2_000)).toBeNull();
    expect(await redis.pttl(slots.parkedKey(tenant))).toBeGreaterThan(0);

    expect(await slots.release(tenant, 'q:h1')).toBe('q:p1');
    // The popped job has not taken its slot yet; the other holder's release pops the next.
    expect(await slots.release(tenant, 'q:h2')).toBe('q:p2');
    // p2 acquires (its entry would be dropped from the parked set if it were there); p3 is still parked.
    expect(await slots.acquire(tenant, 'q:p2')).toBe(true);
    expect(await redis.zrange(slots.parkedKey(tenant), '0', '-1')).toEqual(['q:p3']);
    // A job that comes back on its fallback delay and gets a slot leaves the parked set.
    expect(await slots.acquire(tenant, 'q:p3')).toBe(true);
    expect(await redis.zcard(slots.parkedKey(tenant))).toBe(0);
    // Full again (p2, p3): a release frees one, but nothing is parked.
    expect(await slots.release(tenant, 'q:p2')).toBeNull();
  });

  it("a refused take answers Redis's clock at the refusal: the time a first park is recorded at, whatever the worker host's clock says", async () => {
    const slots = new TenantSlots(redis, { prefix, cap: 1, leaseMs: LONG_LEASE });
    const tenant = randomUUID();
    expect(await slots.take(tenant, 'q:holder')).toMatchObject({ acquired: true });
    const before = await redisNow();
    const refused = await slots.take(tenant, 'q:late');
    const after = await redisNow();
    if (refused.acquired) throw new Error('q:late took a slot past the cap');
    expect(refused.refusedAt).toBeGreaterThanOrEqual(before);
    expect(refused.refusedAt).toBeLessThanOrEqual(after);
  });

  it("a refused take answers its rank among the owner's parked (the set's length when not parked yet); only the cap's earliest are told when the earliest lease lapses, and the rest get a fallback scaled by their rank", async () => {
    const slots = new TenantSlots(redis, { prefix, cap: 2, leaseMs: LONG_LEASE, per: 'endpoint' });
    const owner = randomUUID();
    for (const m of ['q:h1', 'q:h2']) expect(await slots.acquire(owner, m)).toBe(true);
    for (const [i, m] of ['q:p0', 'q:p1', 'q:p2', 'q:p3', 'q:p4'].entries()) {
      const refused = await slots.take(owner, m);
      if (refused.acquired) throw new Error(`${m} took a slot past the cap`);
      expect(refused.rank).toBe(i);
      expect(refused.wakeBy !== undefined).toBe(i < 2);
      await slots.park(owner, m, refused.refusedAt);
    }
    // Parked already: its own place, not the tail.
    expect(await slots.take(owner, 'q:p1')).toMatchObject({ acquired: false, rank: 1 });
    expect([0, 1, 2, 3, 4, 5, 100, 10_000].map((rank) => rankedDelayMs(1000, rank, 2))).toEqual([1000, 1000, 2000, 2000, 3000, 3000, 51_000, 1000 * PARKED_RANK_FACTOR_MAX]);
  });

  it('recover: a popped job whose promotion is overdue is given again; a free slot with nothing pending pops the earliest parked; a promotion within its grace or a held slot pops nothing; an owner with nothing left leaves the index', async () => {
    const GRACE = 300;
    const slots = new TenantSlots(redis, { prefix, cap: 1, leaseMs: GRACE });
    const held = new TenantSlots(redis, { prefix, cap: 1, leaseMs: LONG_LEASE });
    const tenant = randomUUID();
    await held.acquire(tenant, 'q:holder');
    for (const [i, m] of ['q:p1', 'q:p2', 'q:p3'].entries()) await slots.park(tenant, m, 1_000 + i);
    expect(await redis.zrange(slots.ownersKey(), '0', '-1')).toEqual([tenant]);
    // The slot is held: nothing to promote.
    expect(await slots.recover()).toEqual([]);
    // The holder's release pops p1, and its promotion is lost (the releaser died): pending, within its grace nothing is given.
    const poppedAt = await redisNow();
    expect(await slots.release(tenant, 'q:holder')).toBe('q:p1');
    const within = await slots.recover();
    if ((await redisNow()) < poppedAt + GRACE) expect(within).toEqual([]);
    // Overdue: p1 is given again (not p2: the slot is p1's), and again each grace until it takes the slot.
    await waitFor(async () => (await slots.recover()).length > 0 && (await redisNow()) > poppedAt, { what: 'the lost promotion to be overdue' });
    expect(await redis.zrange(slots.promotingKey(tenant), '0', '-1')).toEqual(['q:p1']);
    expect(await slots.acquire(tenant, 'q:p1')).toBe(true);
    expect(await redis.zcard(slots.promotingKey(tenant))).toBe(0);
    expect(await slots.recover()).toEqual([]);
    // p1's run ends, and that promotion is lost too (p2 popped); p2's job was gone, and its wake could not reach Redis: the
    // next look gives p2 again once overdue, its promoter tells Redis it is gone and gets p3.
    expect(await slots.release(tenant, 'q:p1')).toBe('q:p2');
    const again = await waitFor(async () => { const r = await slots.recover(); return r.length ? r : undefined; }, { what: 'p2 overdue' });
    expect(again).toEqual([{ owner: tenant, member: 'q:p2', how: 'redo' }]);
    expect(await slots.wake(tenant, 'q:p2')).toBe('q:p3');
    expect(await redis.zrange(slots.promotingKey(tenant), '0', '-1')).toEqual(['q:p3']);
    expect(await slots.acquire(tenant, 'q:p3')).toBe(true);
    // A free slot with jobs parked and nothing pending (a lease lapsed, a release of a worker of the release before): the earliest parked.
    await slots.park(tenant, 'q:p4', 2_000);
    await slots.park(tenant, 'q:p5', 2_001);
    await slots.release(tenant, 'q:p3').then((m) => expect(m).toBe('q:p4'));
    await redis.zrem(slots.promotingKey(tenant), 'q:p4');
    expect(await slots.recover()).toEqual([{ owner: tenant, member: 'q:p5', how: 'promote' }]);
    expect(await slots.acquire(tenant, 'q:p5')).toBe(true);
    // Nothing parked, nothing pending: the owner leaves the index.
    expect(await slots.recover()).toEqual([]);
    expect(await redis.zcard(slots.ownersKey())).toBe(0);
  });

  it("a popped member's give without a slot taken (a delivery promoted that ends, or parks on another cap, without taking it) is no longer a promotion pending: it does not eat the owner's free slot in recover", async () => {
    const slots = new TenantSlots(redis, { prefix, cap: 1, leaseMs: LONG_LEASE });
    const tenant = randomUUID();
    await slots.acquire(tenant, 'q:holder');
    await slots.park(tenant, 'q:p1', 1_000);
    await slots.park(tenant, 'q:p2', 1_001);
    expect(await slots.release(tenant, 'q:holder')).toBe('q:p1');
    expect(await redis.zrange(slots.promotingKey(tenant), '0', '-1')).toEqual(['q:p1']);
    // p1 came back and passes the free slot on without taking it (passOn, or parked on its endpoint's set): its release of none pops p2.
    expect(await slots.release(tenant, 'q:p1')).toBe('q:p2');
    expect(await redis.zrange(slots.promotingKey(tenant), '0', '-1')).toEqual(['q:p2']);
    expect(await slots.acquire(tenant, 'q:p2')).toBe(true);
    expect(await redis.zcard(slots.promotingKey(tenant))).toBe(0);
    await slots.release(tenant, 'q:p2');
    await redis.zrem(slots.ownersKey(), tenant);
  });

  it("promotions pending count as slots taken: a promoted job's acquire, a wake, a release of none and a park promote no more jobs than the slots free (each one more was refused and parked again: a wasted round trip)", async () => {
    const slots = new TenantSlots(redis, { prefix, cap: 3, leaseMs: LONG_LEASE });
    const tenant = randomUUID();
    for (const m of ['q:h1', 'q:h2', 'q:h3']) expect(await slots.acquire(tenant, m)).toBe(true);
    for (let i = 1; i <= 5; i++) await slots.park(tenant, `q:p${i}`, 1_000 + i);
    // Two slots given back: p1 and p2 are promoted, each for one of them.
    expect(await slots.release(tenant, 'q:h1')).toBe('q:p1');
    expect(await slots.release(tenant, 'q:h2')).toBe('q:p2');
    // p1 comes first: the slot left free is p2's (a pending member acquiring does not count against itself), so no wake is asked for.
    expect(await slots.take(tenant, 'q:p1')).toEqual({ acquired: true, cap: 3, wakeParked: false });
    // Nor does a wake, a give of none (a delivery that never took the slot) or a park find a slot to promote into.
    expect(await slots.wake(tenant)).toBeNull();
    expect(await slots.release(tenant, 'q:bystander')).toBeNull();
    expect(await slots.park(tenant, 'q:late', 2_000)).toBeNull();
    expect(await redis.zrange(slots.parkedKey(tenant), '0', '-1')).toEqual(['q:p3', 'q:p4', 'q:p5', 'q:late']);
    expect(await slots.acquire(tenant, 'q:p2')).toBe(true);
    expect(await redis.zcard(slots.promotingKey(tenant))).toBe(0);
    // p2's promotion passed on without its slot taken (its job gone: the wake is told): the next is promoted into it.
    expect(await slots.release(tenant, 'q:h3')).toBe('q:p3');
    expect(await slots.wake(tenant, 'q:p3')).toBe('q:p4');
    expect(await redis.zrange(slots.promotingKey(tenant), '0', '-1')).toEqual(['q:p4']);
    await redis.zrem(slots.ownersKey(), tenant);
  });

  it("a delivery parked on its tenant's set that parks on its endpoint's instead leaves the tenant's parked set with its give of none: a tenant's release does not promote it out of its endpoint park, and the tenant leaves the recovery index", async () => {
    const endpoints = new TenantSlots(redis, { prefix, per: 'endpoint', cap: 1, leaseMs: LONG_LEASE });
    const tenants = new TenantSlots(redis, { prefix, per: 'webhook-tenant', cap: 1, leaseMs: LONG_LEASE });
    const tenant = randomUUID();
    const endpoint = randomUUID();
    expect(await tenants.acquire(tenant, 'webhooks:held')).toBe(true);
    // D took its endpoint's slot, was refused its tenant's: it gives the endpoint's back and parks on the tenant's set.
    expect(await endpoints.acquire(endpoint, 'webhooks:D')).toBe(true);
    const refused = await tenants.take(tenant, 'webhooks:D');
    if (refused.acquired) throw new Error("D took the tenant's slot past its cap");
    expect(await endpoints.release(endpoint, 'webhooks:D')).toBeNull();
    expect(await tenants.park(tenant, 'webhooks:D', refused.refusedAt)).toBeNull();
    // Its endpoint busy meanwhile, another delivery X parks on the endpoint's set.
    expect(await endpoints.acquire(endpoint, 'webhooks:busy')).toBe(true);
    await endpoints.park(endpoint, 'webhooks:X', refused.refusedAt + 1);
    // D back on its fallback: the endpoint refuses it; it gives the tenant's set a release of none (delivery.ts takeSlots) and parks on the endpoint's.
    expect(await endpoints.take(endpoint, 'webhooks:D', refused.refusedAt)).toMatchObject({ acquired: false });
    expect(await tenants.release(tenant, 'webhooks:D')).toBeNull();
    expect(await endpoints.park(endpoint, 'webhooks:D', refused.refusedAt)).toBeNull();
    expect(await redis.zcard(tenants.parkedKey(tenant))).toBe(0);
    // The tenant's holder ends: nobody is parked on its set to promote (D was, out of its endpoint park, ahead of X).
    expect(await tenants.release(tenant, 'webhooks:held')).toBeNull();
    expect(await tenants.recover()).toEqual([]);
    expect(await redis.zscore(tenants.ownersKey(), tenant)).toBeNull();
    expect(await redis.zrange(endpoints.parkedKey(endpoint), '0', '-1')).toEqual(['webhooks:D', 'webhooks:X']);
    await redis.zrem(endpoints.ownersKey(), endpoint);
  });

  it('a park that finds a slot freed since its acquire pops the earliest parked job at once (no wake-up lost)', async () => {
    const slots = new TenantSlots(redis, { prefix, cap: 1, leaseMs: LONG_LEASE });
    const tenant = randomUUID();
    await slots.acquire(tenant, 'q:holder');
    expect(await slots.acquire(tenant, 'q:late')).toBe(false);
    // The holder gives its slot back before q:late is recorded as parked: its release pops nothing.
    expect(await slots.release(tenant, 'q:holder')).toBeNull();
    expect(await slots.park(tenant, 'q:late', 5_000)).toBe('q:late');
    expect(await redis.zcard(slots.parkedKey(tenant))).toBe(0);
  });

  it('a promoted job that finds its slot taken meanwhile is ranked by its first park (where it parks again), not at the tail: the earliest keep the plain fallback and the lapse wake', async () => {
    const slots = new TenantSlots(redis, { prefix, per: 'endpoint', cap: 1, leaseMs: LONG_LEASE });
    const owner = randomUUID();
    await slots.acquire(owner, 'q:holder');
    for (const [i, m] of ['q:p1', 'q:p2', 'q:p3', 'q:p4'].entries()) await slots.park(owner, m, 1_000 + i);
    // The holder's release pops p1 for promotion; a fresh delivery takes the slot before p1 comes to take it.
    expect(await slots.release(owner, 'q:holder')).toBe('q:p1');
    expect(await slots.acquire(owner, 'q:fresh')).toBe(true);
    // p1 parks again at its first park's place (1000), ahead of p2..p4: its rank is 0, not the set's length (3, a
    // fallback scaled 4 times, and no lapse wake had the fresh holder died).
    const refused = await slots.take(owner, 'q:p1', 1_000);
    expect(refused).toMatchObject({ acquired: false, rank: 0 });
    expect(refused.acquired === false && refused.wakeBy).toBeGreaterThan(0);
    // Without a first park (a job not parked before), the tail; a member still in the set, its own place.
    expect(await slots.take(owner, 'q:new')).toMatchObject({ acquired: false, rank: 3 });
    expect(await slots.take(owner, 'q:p3', 1_002)).toMatchObject({ acquired: false, rank: 1 });
    // A test event's first place (0) ranks ahead of every parked job.
    expect(await slots.take(owner, 'q:test', 0)).toMatchObject({ acquired: false, rank: 0 });
  });

  it("a promotion renews a parked set's expiry that a park set shorter (a worker of the release before, mid-deploy): the deliveries still in it, parked for up to 2 h, keep their places", async () => {
    const slots = new TenantSlots(redis, { prefix, per: 'endpoint', cap: 1, leaseMs: LONG_LEASE });
    const owner = randomUUID();
    const parked = slots.parkedKey(owner);
    await slots.acquire(owner, 'q:holder');
    for (const [i, m] of ['q:p1', 'q:p2', 'q:p3'].entries()) await slots.park(owner, m, 1_000 + i);
    // The release before set 10 minutes at each park: a backlog drained by promotions alone (no park since) lost its set
    // after them, and the deliveries still parked (rank-scaled fallbacks of up to 2 h) came back only on those.
    const OLD_TTL = 600_000;
    await redis.pexpire(parked, OLD_TTL);
    expect(await slots.release(owner, 'q:holder')).toBe('q:p1');
    expect(await redis.pttl(parked)).toBeGreaterThan(OLD_TTL);
    await redis.pexpire(parked, OLD_TTL);
    // p1's job was gone: its promoter's wake pops the next.
    expect(await slots.wake(owner, 'q:p1')).toBe('q:p2');
    expect(await redis.pttl(parked)).toBeGreaterThan(OLD_TTL);
    // Never shortened, and an emptied set is not brought back.
    await redis.pexpire(parked, 24 * 3600_000);
    expect(await slots.wake(owner, 'q:p2')).toBe('q:p3');
    expect(await redis.exists(parked)).toBe(0);
  });

  it('a wake pops the earliest parked job only while a slot is free, and changes no slot', async () => {
    const slots = new TenantSlots(redis, { prefix, cap: 1, leaseMs: LONG_LEASE });
    const tenant = randomUUID();
    await slots.acquire(tenant, 'q:holder');
    await slots.park(tenant, 'q:p2', 2_000);
    await slots.park(tenant, 'q:p1', 1_000);
    expect(await slots.wake(tenant)).toBeNull();
    expect(await redis.zcard(slots.parkedKey(tenant))).toBe(2);
    // The holder's release pops p1; the free slot is p1's (a promotion pending), so a wake pops nobody else.
    expect(await slots.release(tenant, 'q:holder')).toBe('q:p1');
    expect(await slots.wake(tenant)).toBeNull();
    // p1's job was gone: its promoter's wake, told so, pops the next.
    expect(await slots.wake(tenant, 'q:p1')).toBe('q:p2');
    expect(await slots.wake(tenant)).toBeNull();
    expect(await redis.zcard(slots.slotsKey(tenant))).toBe(0);
  });

  it("slots per webhook endpoint (ADR 0013) live in keys of their own: an endpoint's cap and a tenant's of the same id do not meet", async () => {
    const tenants = new TenantSlots(redis, { prefix, cap: 1, leaseMs: LONG_LEASE });
    const endpoints = new TenantSlots(redis, { prefix, per: 'endpoint', cap: 1, leaseMs: LONG_LEASE });
    const id = randomUUID();
    expect(endpoints.slotsKey(id)).toBe(`${prefix}:endpoint-slots:${id}`);
    expect(endpoints.parkedKey(id)).toBe(`${prefix}:endpoint-parked:${id}`);
    expect(await tenants.acquire(id, 'q:a')).toBe(true);
    expect(await endpoints.acquire(id, 'webhooks:b')).toBe(true);
    expect(await endpoints.acquire(id, 'webhooks:c')).toBe(false);
    expect(await endpoints.park(id, 'webhooks:c', await redisNow())).toBeNull();
    expect(await endpoints.release(id, 'webhooks:b')).toBe('webhooks:c');
    expect(await redis.zrange(tenants.slotsKey(id), '0', '-1')).toEqual(['q:a']);
  });

  it("a tenant's override in <prefix>:tenant-limits replaces the cap; a value that is no whole number from 1 is ignored (the setting applies) and fails no script", async () => {
    const slots = new TenantSlots(redis, { prefix, cap: 2, leaseMs: LONG_LEASE });
    const capOf = async (tenant: string) => {
      let n = 0;
      while ((await slots.take(tenant, `q:${n}`)).acquired) n++;
      return { held: n, applied: (await slots.take(tenant, 'q:last')).cap };
    };
    const overridden = randomUUID();
    await redis.hset(slots.limitsKey(), overridden, '3');
    expect(await capOf(overridden)).toEqual({ held: 3, applied: 3 });
    // Raised while a job is parked: an acquire that leaves a slot free says so, for its caller to wake the parked job.
    await slots.park(overridden, 'q:waiting', 1);
    await redis.hset(slots.limitsKey(), overridden, '5');
    expect(await slots.take(overridden, 'q:3')).toEqual({ acquired: true, cap: 5, wakeParked: true });
    expect(await slots.take(overridden, 'q:4')).toEqual({ acquired: true, cap: 5, wakeParked: false });
    // Written by hand or by a bug: neither lifts the cap (0, inf, a huge number) nor stops the tenant's runs (a script error, a cap of 0).
    for (const bad of ['', 'abc', '0', '-2', '1.5', 'inf', 'nan', '1e300', ' ']) {
      const tenant = randomUUID();
      await redis.hset(slots.limitsKey(), tenant, bad);
      expect(await capOf(tenant), JSON.stringify(bad)).toEqual({ held: 2, applied: 2 });
      expect(await slots.park(tenant, 'q:parked', 1)).toBeNull();
      expect(await slots.release(tenant, 'q:0')).toBe('q:parked');
      expect(await slots.wake(tenant)).toBeNull();
    }
  });

  it('a member names its queue and job id; a cap below 1 is refused', () => {
    expect(parseSlotMember(slotMember('golden-path', 'gp-abc-1-partner-dossier'))).toEqual({ queue: 'golden-path', jobId: 'gp-abc-1-partner-dossier' });
    expect(() => new TenantSlots(redis, { prefix, cap: 0, leaseMs: 1000 })).toThrow(/at least 1/);
  });
});
