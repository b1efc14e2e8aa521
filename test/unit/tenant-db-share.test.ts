import { describe, expect, it } from 'vitest';
import { connectionShareOf, TenantConnectionShare } from '../../src/platform/http/tenant-db-share.ts';

const A = 'tenant-a';
const B = 'tenant-b';
const LONG = 60_000;

describe("a tenant's share of the API's connections (TenantConnectionShare)", () => {
  it('takes a place at once, without a promise, while the tenant is under its share; other tenants are not counted', () => {
    const share = new TenantConnectionShare(2, LONG);
    expect(share.take(A)).toBeUndefined();
    expect(share.take(A)).toBeUndefined();
    expect(share.take(B)).toBeUndefined();
    expect(share.take(B)).toBeUndefined();
  });

  it("past its share a request waits; a place given back goes to the tenant's longest waiter, first come first served", async () => {
    const share = new TenantConnectionShare(1, LONG);
    expect(share.take(A)).toBeUndefined();
    const order: number[] = [];
    const first = share.take(A)!.then((got) => (order.push(1), got));
    const second = share.take(A)!.then((got) => (order.push(2), got));
    share.give(A);
    expect(await first).toBe(true);
    share.give(A);
    expect(await second).toBe(true);
    expect(order).toEqual([1, 2]);
    // The last holder gives its place back: free again.
    share.give(A);
    expect(share.take(A)).toBeUndefined();
  });

  it('a wait that outlasts its bound ends with false and holds nothing: a later place given back is free, not handed to it', async () => {
    const share = new TenantConnectionShare(1, 1);
    expect(share.take(A)).toBeUndefined();
    expect(await share.take(A)!).toBe(false);
    share.give(A);
    expect(share.take(A)).toBeUndefined();
    expect(share.take(B)).toBeUndefined();
  });

  it('a waiter that leaves (its client hung up) is out of the queue at once, with false: the next place given back goes to the one after it', async () => {
    const share = new TenantConnectionShare(1, LONG);
    expect(share.take(A)).toBeUndefined();
    const gone = share.take(A)!;
    const next = share.take(A)!;
    share.leave(A, gone);
    expect(await gone).toBe(false);
    share.give(A);
    expect(await next).toBe(true);
    // Leaving after the wait ended changes nothing: the place stays with its holder.
    share.leave(A, next);
    expect(share.take(A)).toBeDefined();
  });
});

describe('connectionShareOf (API_MAX_DB_CONNECTIONS_PER_TENANT)', () => {
  it('unset: half the pool, at least one; set: the setting; 0: no share', () => {
    expect(connectionShareOf(undefined, 10)).toBe(5);
    expect(connectionShareOf(undefined, 5)).toBe(2);
    expect(connectionShareOf(undefined, 1)).toBe(1);
    expect(connectionShareOf(3, 10)).toBe(3);
    expect(connectionShareOf(0, 10)).toBeUndefined();
  });
});
