import type { Express } from 'express';
import type { AddressInfo } from 'node:net';
import { MUTATING_METHODS, type HttpMethod } from '../platform/http/route.ts';
import { covers, samplePath, type Endpoint } from './route-table.ts';
import { fail, pass, type ReadinessRow } from './readiness.types.ts';

/** Paths that are public by design: health, metrics (scraped on the private network) and the API documents. */
export const PUBLIC_PATHS = ['/healthz', '/readyz', '/metrics', '/openapi.json', '/docs'];

export const isPublic = (path: string) => PUBLIC_PATHS.some((p) => covers(p, path));
const label = (e: Endpoint) => `${e.kind === 'mount' ? 'mount' : e.methods.map((m) => m.toUpperCase()).join('|')} ${e.path}`;
const REFUSED = new Set([401, 403]);

/** Sends unauthenticated requests to the live app on an ephemeral loopback port. Returns the status code. */
export type Probe = (method: string, path: string) => Promise<number>;

export async function withProbe<T>(app: Express, fn: (probe: Probe) => Promise<T>): Promise<T> {
  const server = await new Promise<import('node:http').Server>((resolve, reject) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
    s.once('error', reject);
  });
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const probe: Probe = async (method, path) => {
    const body = MUTATING_METHODS.has(method.toLowerCase() as HttpMethod) ? '{}' : undefined;
    const res = await fetch(`${base}${path}`, {
      method: method.toUpperCase(),
      redirect: 'manual',
      headers: body ? { 'content-type': 'application/json' } : {},
      ...(body ? { body } : {}),
      signal: AbortSignal.timeout(10_000),
    });
    await res.arrayBuffer();
    return res.status;
  };
  try {
    return await fn(probe);
  } finally {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

/** Every POST/PUT/PATCH/DELETE route carries the idempotency middleware (read from the router stack). */
export function idempotencyRow(endpoints: Endpoint[]): ReadinessRow {
  const mutating = endpoints.filter((e) => e.kind === 'route' && e.methods.some((m) => MUTATING_METHODS.has(m as HttpMethod)));
  const missing = mutating.filter((e) => !e.guards.includes('idempotency'));
  if (missing.length) return fail('routes-idempotency', `without the idempotency middleware: ${missing.map(label).join(', ')}`);
  if (!mutating.length) return fail('routes-idempotency', 'no POST/PUT/PATCH/DELETE routes found: is the API router mounted?');
  return pass('routes-idempotency', `${mutating.length} POST/PUT/PATCH/DELETE routes, all with the idempotency middleware`);
}

/**
 * Every route and mount except the public ones requires authentication: an authenticate or admin-auth
 * middleware runs before it (router stack), and an unauthenticated request to it is refused (live probe).
 */
export async function authenticationRow(endpoints: Endpoint[], probe: Probe, exclude: string[] = []): Promise<ReadinessRow> {
  const guarded = endpoints.filter((e) => !isPublic(e.path) && !exclude.some((x) => covers(x, e.path)));
  if (!guarded.some((e) => e.kind === 'route')) return fail('routes-authentication', 'no API routes found: is the API router mounted?');
  const problems: string[] = [];
  for (const e of guarded) {
    if (!e.guards.includes('authenticate') && !e.guards.includes('admin-auth')) {
      problems.push(`${label(e)} has no authentication middleware`);
      continue;
    }
    const method = e.kind === 'mount' ? 'get' : (e.methods.find((m) => m === 'get') ?? e.methods[0] ?? 'get');
    const status = await probe(method, samplePath(e.path));
    if (!REFUSED.has(status)) problems.push(`${method.toUpperCase()} ${samplePath(e.path)} without credentials answered ${status}, not 401/403`);
  }
  if (problems.length) return fail('routes-authentication', problems.join('; '));
  return pass('routes-authentication', `${guarded.length} routes/mounts require authentication (public: ${PUBLIC_PATHS.join(', ')})`);
}
