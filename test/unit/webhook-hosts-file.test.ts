import { describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HostResolver, parseHosts } from '../../src/platform/webhooks/resolve.ts';

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

  it('a hosts file that cannot be read is no hosts file (as nss `files` unavailable), at the first resolution as at the next — not an fs error thrown once', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dealix-hosts-'));
    try {
      // A directory: stat succeeds, the read fails (EISDIR) — as an unreadable /etc/hosts (EACCES) for a non-root process.
      const hostsFile = join(dir, 'hosts');
      mkdirSync(hostsFile);
      // No name server is asked: `localhost` names are loopback without one.
      const resolver = new HostResolver({ servers: ['127.0.0.1:1'], timeoutMs: 1000, hostsFile });
      const loopback = [
        { address: '127.0.0.1', family: 4 },
        { address: '::1', family: 6 },
      ];
      expect(await resolver.resolve('localhost')).toEqual(loopback);
      expect(await resolver.resolve('hook.localhost')).toEqual(loopback);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
