import { describe, expect, it } from 'vitest';
import { parseHosts } from '../../src/platform/webhooks/resolve.ts';

describe('the hosts file as webhook resolution reads it (resolve.ts)', () => {
  it('maps every name and alias of a line to its address, case-insensitively, IPv4 first; comments and malformed lines are skipped', () => {
    const table = parseHosts(['# a comment', '127.0.0.1 localhost', '::1  localhost ip6-localhost  # trailing comment', '10.0.0.5\tReceiver.Internal receiver', 'not-an-address bogus', 'fe80::1%eth0 scoped', ''].join('\n'));
    expect(table.get('localhost')).toEqual([
      { address: '127.0.0.1', family: 4 },
      { address: '::1', family: 6 },
    ]);
    expect(table.get('ip6-localhost')).toEqual([{ address: '::1', family: 6 }]);
    expect(table.get('receiver.internal')).toEqual([{ address: '10.0.0.5', family: 4 }]);
    expect(table.get('receiver')).toEqual([{ address: '10.0.0.5', family: 4 }]);
    expect(table.has('bogus')).toBe(false);
    expect(table.has('scoped')).toBe(false);
  });
});
