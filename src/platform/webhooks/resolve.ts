import { Resolver, getServers } from 'node:dns';
import { readFileSync, statSync } from 'node:fs';
import { isIP } from 'node:net';

/**
 * How webhook receivers' host names are resolved (ADR 0013, *Resolving a receiver's host*): never with
 * node:dns `lookup`. `lookup` is getaddrinfo(3) on libuv's threadpool (4 threads by default, shared with
 * fs, crypto and zlib, and getaddrinfo may take at most half of them); a receiver's host name is tenant
 * input, and one whose DNS never answers held a thread for the system resolver's whole timeout (5 s ×
 * attempts × servers) at every attempt — a wait nothing can cancel, so a few such deliveries at once
 * left every other tenant's deliveries, and every other use of the pool in the process, queued behind
 * them. Here a name is resolved by c-ares (node:dns `Resolver`: asynchronous sockets on the event loop,
 * no thread), A and AAAA at once, within a bound of our own.
 *
 * Names are looked up in this order:
 * 1. the hosts file (/etc/hosts), which c-ares's queries do not read: a name it lists gets its addresses
 *    from there and nothing else, as `files` before `dns` in nsswitch.conf (`localhost`, names an
 *    operator pinned). Read on the event loop, a few KB, again only when its mtime changed (checked at
 *    most once a second): no threadpool either.
 * 2. `localhost` and `*.localhost` not in it: loopback (RFC 6761), never sent to a name server.
 * 3. every other name, dotless ones included, is a DNS query of that very name to the servers
 *    (WEBHOOK_DNS_SERVERS, else the system's, as dns.getServers() reads /etc/resolv.conf), with no
 *    resolv.conf `search` domain appended: a receiver is a public name, and a search list names the
 *    platform's own network.
 */

export interface ResolvedAddress {
  address: string;
  family: 4 | 6;
}

/**
 * Why a name has no address to use: `no-address` (NXDOMAIN, or no A nor AAAA record: the name is wrong),
 * `timeout` (no answer within the bound), `temporary` (a server failure or refusal: says nothing of the name).
 */
export type DnsFailure = 'no-address' | 'timeout' | 'temporary';

export class DnsError extends Error {
  readonly code: string;
  readonly failure: DnsFailure;
  constructor(code: string, failure: DnsFailure, message: string) {
    super(message);
    this.name = 'DnsError';
    this.code = code;
    this.failure = failure;
  }
}

/** What c-ares answers when the name is there to be asked about, and has no address (of that family). */
const NO_ADDRESS_CODES = new Set(['ENOTFOUND', 'ENODATA', 'EBADNAME']);

/** Tries of each server per query: one lost UDP datagram does not fail a resolution. */
const TRIES = 2;

/**
 * How long, once one family has answered addresses, the other family's query is waited for before the answer in
 * hand is used: RFC 8305's Resolution Delay (Happy Eyeballs v2, section 3: 50 ms). A server or middlebox that drops
 * AAAA queries (or A ones) then costs every resolution of the name this, not the whole bound.
 */
export const RESOLUTION_DELAY_MS = 50;

export interface HostResolverOptions {
  /** WEBHOOK_DNS_SERVERS (`ip` or `ip:port`, `[ipv6]:port`); empty: the system's (dns.getServers()). */
  servers: readonly string[];
  /** The whole resolution's bound, both families, every server and try (min of WEBHOOK_DNS_TIMEOUT and WEBHOOK_TIMEOUT). */
  timeoutMs: number;
  /** The hosts file (default /etc/hosts). */
  hostsFile?: string;
}

export class HostResolver {
  readonly timeoutMs: number;
  private readonly resolver: Resolver;
  private readonly hosts: HostsFile;

  constructor(opts: HostResolverOptions) {
    this.timeoutMs = opts.timeoutMs;
    const servers = opts.servers.length > 0 ? opts.servers : getServers();
    // c-ares's own bound of a query (each server `TRIES` times, no doubling past `maxTimeout`) about ours:
    // a query given up by the race below ends by itself soon after, on no thread.
    const perTry = Math.max(1, Math.floor(opts.timeoutMs / (TRIES * Math.max(1, servers.length))));
    this.resolver = new Resolver({ timeout: perTry, tries: TRIES, maxTimeout: perTry });
    if (opts.servers.length > 0) this.resolver.setServers([...opts.servers]);
    this.hosts = new HostsFile(opts.hostsFile ?? '/etc/hosts');
  }

  /**
   * The addresses of `host` (IPv4 first), of `family` only if it is 4 or 6. Rejects with a DnsError:
   * no address, no answer within `timeoutMs`, or a temporary failure.
   */
  async resolve(host: string, family?: number): Promise<ResolvedAddress[]> {
    const wanted = (a: ResolvedAddress) => (family !== 4 && family !== 6) || a.family === family;
    const literal = isIP(host);
    if (literal) return [{ address: host, family: literal as 4 | 6 }].filter(wanted);
    const name = host.toLowerCase().replace(/\.$/, '');
    const listed = this.hosts.lookup(name) ?? (name === 'localhost' || name.endsWith('.localhost') ? LOOPBACK : undefined);
    const found = listed ? listed.filter(wanted) : await this.query(host, family);
    if (found.length === 0) throw new DnsError('ENOTFOUND', 'no-address', `${host} has no address in DNS${family === 4 || family === 6 ? ` (IPv${family})` : ''}`);
    return found;
  }

  /**
   * A and AAAA (or the one `family` asks for) from the name servers, within the bound. Once one family has answered
   * addresses, the other is waited for RESOLUTION_DELAY_MS more at most (RFC 8305, section 3), then the answer in
   * hand is used: a server or middlebox that drops AAAA queries made every resolution of the name wait out the whole
   * bound before its A records were used (every delivery attempt, WEBHOOK_DNS_TIMEOUT each). A family that failed
   * (NXDOMAIN, SERVFAIL, no records) is no answer in hand: the other is waited for to the bound.
   */
  private async query(host: string, family?: number): Promise<ResolvedAddress[]> {
    type Answer = string[] | NodeJS.ErrnoException;
    const answered: { 4?: Answer; 6?: Answer } = {};
    const timers: NodeJS.Timeout[] = [];
    let settled: 'answered' | 'timeout';
    try {
      settled = await new Promise<'answered' | 'timeout'>((resolve) => {
        // Settled once: an answer arriving after it (the family given up on) is not taken.
        let open = true;
        const settle = (how: 'answered' | 'timeout') => {
          open = false;
          resolve(how);
        };
        timers.push(setTimeout(() => settle('timeout'), this.timeoutMs));
        const asked = ([4, 6] as const).filter((f) => family !== (f === 4 ? 6 : 4));
        for (const f of [4, 6] as const) if (!asked.includes(f)) answered[f] = [];
        let waiting = asked.length;
        const done = (f: 4 | 6) => (err: NodeJS.ErrnoException | null, found: string[]) => {
          if (!open) return;
          answered[f] = err ?? found;
          waiting -= 1;
          if (waiting === 0) settle('answered');
          // The first family with addresses: the other gets the resolution delay, not the rest of the bound.
          else if (!err && found.length > 0) timers.push(setTimeout(() => settle('answered'), RESOLUTION_DELAY_MS));
        };
        for (const f of asked) {
          if (f === 4) this.resolver.resolve4(host, done(4));
          else this.resolver.resolve6(host, done(6));
        }
      });
    } finally {
      for (const t of timers) clearTimeout(t);
    }
    const { 4: v4, 6: v6 } = answered;
    const found = [...(Array.isArray(v4) ? v4.map((address) => ({ address, family: 4 as const })) : []), ...(Array.isArray(v6) ? v6.map((address) => ({ address, family: 6 as const })) : [])];
    // What one family answered is used though the other failed or is still unanswered (past the resolution delay or
    // the bound): every address used is checked (ssrf.ts), and the connection goes only to those; a family that
    // answers later is not used.
    if (found.length > 0) return found;
    if (settled === 'timeout') throw timedOut(host, this.timeoutMs);
    const failures = [v4, v6].filter((r): r is NodeJS.ErrnoException => r !== undefined && !Array.isArray(r));
    const hard = failures.find((e) => e.code === 'ETIMEOUT') ?? failures.find((e) => !NO_ADDRESS_CODES.has(e.code ?? ''));
    if (hard?.code === 'ETIMEOUT') throw timedOut(host, this.timeoutMs);
    if (hard) throw new DnsError(hard.code ?? 'EAI_AGAIN', 'temporary', `DNS lookup of ${host} failed for now (${hard.code ?? hard.message})`);
    return [];
  }
}

const timedOut = (host: string, ms: number) => new DnsError('ETIMEOUT', 'timeout', `no DNS answer for ${host} within ${ms} ms`);

const LOOPBACK: ResolvedAddress[] = [
  { address: '127.0.0.1', family: 4 },
  { address: '::1', family: 6 },
];

/** The hosts file's names and their addresses, re-read when its mtime changes (checked at most once a second). */
class HostsFile {
  private readonly path: string;
  private table = new Map<string, ResolvedAddress[]>();
  private mtimeMs = -1;
  private checkedAt = -Infinity;

  constructor(path: string) {
    this.path = path;
  }

  lookup(name: string): ResolvedAddress[] | undefined {
    this.refresh();
    return this.table.get(name);
  }

  private refresh(): void {
    const now = performance.now();
    if (now - this.checkedAt < 1000) return;
    this.checkedAt = now;
    // A file missing or unreadable (EACCES for a non-root process, a directory) is no hosts file, as nss `files`
    // unavailable is, and is tried again at the next check. Its read failing once threw out of resolve() (a 500 at
    // create), then, its mtime already taken, the names it lists went silently to DNS until it next changed.
    try {
      const mtimeMs = statSync(this.path).mtimeMs;
      if (mtimeMs === this.mtimeMs) return;
      this.table = parseHosts(readFileSync(this.path, 'utf8'));
      this.mtimeMs = mtimeMs;
    } catch {
      this.table = new Map();
      this.mtimeMs = -1;
    }
  }
}

/** `address name alias…` lines, `#` comments; names case-insensitive; IPv4 addresses first for each name, in file order. */
export function parseHosts(text: string): Map<string, ResolvedAddress[]> {
  const table = new Map<string, ResolvedAddress[]>();
  for (const line of text.split('\n')) {
    const [address, ...names] = line.replace(/#.*/, '').trim().split(/\s+/);
    // A zone index (fe80::1%eth0) is no receiver: such lines are skipped with the malformed ones.
    const family = address && !address.includes('%') ? isIP(address) : 0;
    if (!family) continue;
    for (const n of names) {
      const name = n.toLowerCase().replace(/\.$/, '');
      const list = table.get(name) ?? [];
      if (!list.some((a) => a.address === address)) list.push({ address: address!, family: family as 4 | 6 });
      table.set(name, list);
    }
  }
  for (const list of table.values()) list.sort((a, b) => a.family - b.family);
  return table;
}
