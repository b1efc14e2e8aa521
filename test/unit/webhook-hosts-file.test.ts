import { describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HostResolver, parseHosts } from '../../src/platform/webhooks/resolve.ts';
import { resolvedRefusal } from '../../src/platform/webhooks/ssrf.ts';
import { waitFor } from '../helpers/poll.ts';

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

  it("a name the hosts file maps to a private address is refused as a DNS answer would be, without asking a server; an edit of the file is read", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dealix-hosts-'));
    try {
      const hostsFile = join(dir, 'hosts');
      writeFileSync(hostsFile, '10.0.0.5 pinned.hosts.test\n');
      // A server that refuses every query: a name asked of it would be a 503 (thrown), not an answer.
      const resolver = new HostResolver({ servers: ['127.0.0.1:1'], timeoutMs: 1000, hostsFile });
      const policy = { allowPrivate: false, httpsOnly: false };
      expect(await resolvedRefusal('http://PINNED.hosts.test./hook', policy, resolver)).toBe('its host pinned.hosts.test. does not resolve to a public address');
      writeFileSync(hostsFile, '93.184.215.14 pinned.hosts.test\n');
      // A new mtime whatever the file system's timestamp granularity; read at the next check (at most a second on).
      utimesSync(hostsFile, new Date(Date.now() + 60_000), new Date(Date.now() + 60_000));
      await waitFor(async () => (await resolver.resolve('pinned.hosts.test'))[0]?.address === '93.184.215.14', { timeoutMs: 10_000, what: 'the edited hosts file to be read' });
      expect(await resolvedRefusal('http://pinned.hosts.test/hook', policy, resolver)).toBeUndefined();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
