import { describe, expect, it } from 'vitest';
import { trustProxyProblems } from '../../src/platform/http/trust-proxy.ts';

// What Express's `trust proxy` compiles (proxy-addr) is what TRUST_PROXY may hold: the schema checks only its characters.
describe('trustProxyProblems (TRUST_PROXY as Express compiles it)', () => {
  it('accepts what Express accepts: booleans, hop counts, names, addresses, subnets and netmasks', () => {
    for (const v of [true, false, 0, 1, 'loopback', 'loopback, linklocal, uniquelocal', '10.0.0.1', '10.0.0.0/8', '10.0.0.0/255.0.0.0', '::1/128', '::ffff:10.0.0.1, 192.168.0.0/16']) {
      expect(trustProxyProblems(v), String(v)).toEqual([]);
    }
  });

  it('names TRUST_PROXY and what Express could not read for a typo, a bad prefix or a netmask that is none', () => {
    expect(trustProxyProblems('loopbak')).toEqual(['TRUST_PROXY: "loopbak" is not true, false, a hop count, or addresses/subnets/loopback|linklocal|uniquelocal, comma-separated (invalid IP address: loopbak)']);
    for (const v of ['10.0.0.0/33', '1.2.3', '10.0.0.0/255.0.255.0', 'LOOPBACK', '10.0.0.1/']) expect(trustProxyProblems(v), v).toEqual([expect.stringMatching(/^TRUST_PROXY: /)]);
  });
});
