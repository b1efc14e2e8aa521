import { AppError } from '../errors/app-error.ts';
import type { RouteShape } from './method-not-allowed.ts';
import { routeTemplate } from './method-not-allowed.ts';

/**
 * Why the front door or admission refused a request (dealix_requests_refused_total): the tenant's
 * submission rate (RATE_LIMIT_PER_MINUTE, 429) or runs in flight (MAX_RUNS_IN_FLIGHT_PER_TENANT or its
 * override, 429), the tenant's share of this process's in-flight requests (API_MAX_INFLIGHT_PER_TENANT,
 * 429), this process at capacity (API_MAX_INFLIGHT, 503), or the tenant's share of this process's database
 * connections busy for as long as a request waits for one (API_MAX_DB_CONNECTIONS_PER_TENANT, 503), or the
 * tenant's hourly budget of resent webhook deliveries spent (WEBHOOK_RESEND_MAX_PER_HOUR, 429, resend.ts).
 */
export type RefusalReason = 'rate_limit' | 'runs_in_flight' | 'tenant_in_flight' | 'load_shed' | 'tenant_db_connections' | 'webhook_resend';

/**
 * Counts one refused request. `route` is the route's method and template (`POST /api/v1/golden-path/run`),
 * or `other` for a path no API route names: bounded labels, never the raw path or the tenant (the access
 * log line names both).
 */
export type OnRefused = (reason: RefusalReason, route: string) => void;

/** A 429 of a tenant limit, with the limit that refused it; `code` is the problem's (`rate_limited` unless a route names its own). */
export class TooManyRequestsError extends AppError {
  readonly reason: RefusalReason;
  constructor(reason: RefusalReason, detail: string, retryAfter: number, code = 'rate_limited') {
    super(code, 'Too Many Requests', { status: 429, retryable: true, detail, headers: { 'Retry-After': String(retryAfter) } });
    this.reason = reason;
  }
}

/** A route's label in the refusal counter. */
export const routeLabel = (route: Pick<RouteShape, 'method' | 'path'>): string => `${route.method.toUpperCase()} ${route.path}`;

/**
 * The route label of a request seen before routing (load shedding): the first route whose method and
 * template match, else `other`. Only refused requests are matched, so this costs nothing while not shedding.
 */
export function routeLabelOf(routes: ReadonlyArray<Pick<RouteShape, 'method' | 'path'>>): (method: string, path: string) => string {
  const compiled = routes.map((r) => ({ method: r.method.toUpperCase(), re: routeTemplate(r.path).re, label: routeLabel(r) }));
  return (method, path) => {
    // Express serves HEAD by a GET route.
    const m = method.toUpperCase() === 'HEAD' ? 'GET' : method.toUpperCase();
    return compiled.find((r) => r.method === m && r.re.test(path))?.label ?? 'other';
  };
}
