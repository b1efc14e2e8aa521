import { isIP } from 'node:net';
import ipaddr from 'ipaddr.js';
import type { Logger } from 'pino';
import { ServiceUnavailableError } from '../errors/app-error.ts';
import { DnsError, type HostResolver, type ResolvedAddress } from './resolve.ts';

/**
 * The SSRF guard of webhook endpoints: a receiver must be a public unicast address. Loopback,
 * private (RFC 1918, carrier-grade NAT), link-local (cloud metadata at 169.254.169.254),
 * unique-local, multicast, unspecified and reserved addresses are refused unless
 * WEBHOOK_ALLOW_PRIVATE_NETWORKS. Checked when an endpoint is created and again at every delivery on
 * the very addresses the connection uses (a custom `lookup`), so a name that resolved to a public
 * address at create and to an internal one later (DNS rebinding) is refused then too.
 */
export interface UrlPolicy {
  allowPrivate: boolean;
  /** Production: only https:// receivers. */
  httpsOnly: boolean;
}

/**
 * The start of an API or worker process with WEBHOOK_ALLOW_PRIVATE_NETWORKS=true says, once, that the
 * guard is off (as the API does for a published JWT secret); the readiness row `webhook-ssrf-guard`
 * fails on it in production.
 */
export function warnWhenGuardOff(logger: Logger, allowPrivate: boolean): void {
  if (!allowPrivate) return;
  logger.warn(
    { security_event: 'webhook_private_networks_allowed' },
    'WEBHOOK_ALLOW_PRIVATE_NETWORKS=true: the webhook SSRF guard is off; endpoints may reach loopback, private and link-local addresses (cloud metadata, internal services); never in production',
  );
}

/**
 * Unicast addresses, public to ipaddr.js, that are a cloud platform's own services inside every VM's reach:
 * Azure's WireServer (168.63.129.16: host agent, DNS, health probes). Instance metadata elsewhere is link-local
 * (169.254.169.254), CGNAT (Alibaba's 100.100.100.200) or unique-local (AWS's fd00:ec2::254), refused as such.
 */
const CLOUD_PLATFORM: readonly [ipaddr.IPv4, number][] = [ipaddr.IPv4.parseCIDR('168.63.129.16/32')];

/** Why an address may not receive webhooks; undefined when it may. */
export function addressRefusal(address: string, allowPrivate: boolean): string | undefined {
  if (allowPrivate) return undefined;
  let parsed: ipaddr.IPv4 | ipaddr.IPv6;
  try {
    parsed = ipaddr.parse(address);
  } catch {
    return `${address} is not an IP address`;
  }
  // ::ffff:10.0.0.1 is 10.0.0.1.
  if (parsed.kind() === 'ipv6' && (parsed as ipaddr.IPv6).isIPv4MappedAddress()) parsed = (parsed as ipaddr.IPv6).toIPv4Address();
  const range = parsed.range();
  // ipaddr.js calls ::/96 (IPv4-compatible, deprecated; :: and ::1 aside) unicast: a stack that still
  // maps ::a.b.c.d to a.b.c.d would reach the embedded IPv4 address, so it is refused whatever it embeds.
  if (range === 'unicast' && parsed.kind() === 'ipv6' && (parsed as ipaddr.IPv6).parts.slice(0, 6).every((p) => p === 0)) return `${address} is a ipv4Compatible address`;
  if (range === 'unicast' && parsed.kind() === 'ipv4' && CLOUD_PLATFORM.some((cidr) => (parsed as ipaddr.IPv4).match(cidr))) return `${address} is a cloudPlatform address`;
  return range === 'unicast' ? undefined : `${address} is a ${range} address`;
}

/** Why a URL may not be an endpoint before any resolution (scheme, credentials, literal address); undefined when it may. */
export function urlRefusal(raw: string, policy: UrlPolicy): string | undefined {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return 'not a URL';
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return 'must be an http(s) URL';
  if (policy.httpsOnly && url.protocol !== 'https:') return 'must be an https:// URL';
  if (url.username || url.password) return 'must not carry credentials';
  const host = hostOf(url);
  if (isIP(host)) return addressRefusal(host, policy.allowPrivate);
  return undefined;
}

/**
 * A URL's scheme, host and port (`https://hooks.example.com`, `http://[::1]:8080`), where it names an endpoint to
 * someone who may not hold it — a log line, the `webhook_endpoint.disabled` event the tenant's other receivers get:
 * never its path or query, which may carry a receiver's token (`?token=…`, Slack's `/services/T…/B…/<secret>`).
 */
export const urlOrigin = (url: string): string | null => {
  try {
    return new URL(url).origin;
  } catch {
    return null;
  }
};

/** The URL's host as `lookup` and `isIP` take it (IPv6 literals without brackets). */
export const hostOf = (url: URL): string => url.hostname.replace(/^\[(.*)\]$/, '$1');

/**
 * What a refused host name is said of: the same whether it resolves to a non-public address or to none.
 * Never the address nor its range: the tenant reads it (the 422, a delivery's last_error), and the
 * platform's resolver must not map its own network for whoever creates endpoints — neither which
 * internal name has which address, nor which internal names exist (`http://redis/` was told "resolves
 * to a non-public address", `http://nosuch/` "does not resolve (ENOTFOUND)"; ADR 0013, *SSRF guard*).
 * With the guard off (WEBHOOK_ALLOW_PRIVATE_NETWORKS) every internal name is reachable anyway: a name
 * with no address is said so (ENOTFOUND), for the developer.
 */
const NON_PUBLIC = 'does not resolve to a public address';

/**
 * Resolves the URL's host (resolve.ts: c-ares, no threadpool thread) and refuses it when any address it
 * resolves to may not receive webhooks. A name with no address is refused (422); one not resolved within
 * the resolver's bound, or whose servers failed for now, is "not now" (503), not an answer about the URL.
 */
export async function resolvedRefusal(raw: string, policy: UrlPolicy, resolver: HostResolver): Promise<string | undefined> {
  const early = urlRefusal(raw, policy);
  if (early) return early;
  const host = hostOf(new URL(raw));
  if (isIP(host)) return undefined;
  let addresses: ResolvedAddress[];
  try {
    addresses = await resolver.resolve(host);
  } catch (e) {
    if (!(e instanceof DnsError)) throw e;
    // A resolver that has not answered in time, or failed for now: 503 ("not now", Retry-After), not a 422 that says the URL is wrong.
    if (e.failure === 'timeout') throw new ServiceUnavailableError(`The host ${host} could not be resolved within ${resolver.timeoutMs} ms; try again.`);
    if (e.failure === 'temporary') throw new ServiceUnavailableError(`The host ${host} could not be resolved for now (${e.code}); try again.`);
    return policy.allowPrivate ? `its host ${host} does not resolve (${e.code})` : `its host ${host} ${NON_PUBLIC}`;
  }
  for (const a of addresses) {
    if (addressRefusal(a.address, policy.allowPrivate)) return `its host ${host} ${NON_PUBLIC}`;
  }
  return undefined;
}

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string | ResolvedAddress[], family?: number) => void;

/**
 * A `lookup` for http(s).request that resolves with `resolver` and fails the connection when an address it
 * would connect to may not receive webhooks: the check and the connection use the same addresses (the
 * connection is made to those returned here, and nothing resolves the name again), so a name rebound to
 * an internal address after its endpoint was created is refused at the attempt.
 */
export function guardedLookup(allowPrivate: boolean, resolver: HostResolver) {
  return (hostname: string, options: { all?: boolean; family?: number }, callback: LookupCallback): void => {
    resolver.resolve(hostname, options.family).then(
      (addresses) => {
        for (const a of addresses) {
          if (addressRefusal(a.address, allowPrivate)) return callback(Object.assign(new Error(`webhook receiver refused: ${hostname} ${NON_PUBLIC}`), { code: 'EWEBHOOKADDR' }), []);
        }
        if (options.all) return callback(null, addresses);
        const first = addresses[0]!;
        callback(null, first.address, first.family);
      },
      (err: Error) => {
        // No address, as a non-public one is said (NON_PUBLIC): a delivery's last_error tells no more than the create's 422.
        if (!allowPrivate && err instanceof DnsError && err.failure === 'no-address') return callback(Object.assign(new Error(`webhook receiver refused: ${hostname} ${NON_PUBLIC}`), { code: 'EWEBHOOKADDR' }), []);
        callback(Object.assign(err, { code: (err as NodeJS.ErrnoException).code ?? 'EAI_AGAIN' }), []);
      },
    );
  };
}
