import { describe, expect, it } from 'vitest';
import { retryDelayMs, WEBHOOK_RETRY_MAX_MS } from '../../src/platform/webhooks/delivery.ts';
import { addressRefusal } from '../../src/platform/webhooks/ssrf.ts';

describe('webhook retry schedule', () => {
  it('doubles from the base, at most 4 h apart, each wait within ±20 %: the defaults (30 s, 15 attempts) span about 24 h', () => {
    const base = 30_000;
    const nominal = (failed: number) => Math.min(WEBHOOK_RETRY_MAX_MS, base * 2 ** (failed - 1));
    for (let failed = 1; failed <= 14; failed++) {
      for (let i = 0; i < 50; i++) {
        const d = retryDelayMs(base, failed);
        expect(d).toBeGreaterThanOrEqual(Math.floor(nominal(failed) * 0.8));
        expect(d).toBeLessThanOrEqual(Math.ceil(nominal(failed) * 1.2));
      }
    }
    // 14 waits between 15 attempts: 30 s … 128 min, then 4 h five times (docs/api.md, *Webhooks*).
    const total = Array.from({ length: 14 }, (_, i) => nominal(i + 1)).reduce((a, b) => a + b, 0);
    expect(total / 3_600_000).toBeCloseTo(24.26, 1);
  });
});

describe('webhook receiver addresses', () => {
  it.each([
    ['127.0.0.1', 'loopback'],
    ['10.0.0.1', 'private'],
    ['172.16.5.4', 'private'],
    ['192.168.1.1', 'private'],
    ['100.64.0.1', 'carrierGradeNat'],
    ['169.254.169.254', 'linkLocal'],
    ['0.0.0.0', 'unspecified'],
    ['224.0.0.1', 'multicast'],
    ['::1', 'loopback'],
    ['fe80::1', 'linkLocal'],
    ['fd12:3456::1', 'uniqueLocal'],
    ['ff02::1', 'multicast'],
    ['::ffff:10.0.0.1', 'private'],
    // IPv4-compatible (deprecated, RFC 4291 2.5.5.1): `http://[::127.0.0.1]/` as the URL parser writes it.
    ['::7f00:1', 'ipv4Compatible'],
    ['::a9fe:a9fe', 'ipv4Compatible'],
    ['::808:808', 'ipv4Compatible'],
    // Azure's WireServer (host agent, instance metadata's sibling): a unicast address to ipaddr.js, every Azure VM reaches it.
    ['168.63.129.16', 'cloudPlatform'],
    ['::ffff:168.63.129.16', 'cloudPlatform'],
  ])('%s is refused (%s) without WEBHOOK_ALLOW_PRIVATE_NETWORKS, admitted with it', (address, range) => {
    expect(addressRefusal(address, false)).toBe(`${address} is a ${range} address`);
    expect(addressRefusal(address, true)).toBeUndefined();
  });

  it.each(['93.184.215.14', '8.8.8.8', '2606:4700:4700::1111', '168.63.129.15', '168.63.129.17'])('public %s is admitted', (address) => {
    expect(addressRefusal(address, false)).toBeUndefined();
  });
});
