import querystring from 'node:querystring';
import { createContextKey, type Context } from '@opentelemetry/api';

/** Span and log attribute names, in one place. */
export const ATTR = {
  TENANT: 'dealix.tenant_id',
  RUN: 'dealix.run_id',
  STEP: 'dealix.step',
  SEQUENCE: 'dealix.sequence_num',
  ATTEMPT: 'dealix.attempt',
  REPLAYED: 'dealix.replayed',
  CORRELATION: 'dealix.correlation_id',
  WORKFLOW: 'dealix.workflow',
} as const;

const VALID_CORRELATION_ID = /^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$/;

/** A business correlation id the platform accepts (from X-Correlation-Id, or baggage): 1–128 safe characters. */
export function isValidCorrelationId(v: unknown): v is string {
  return typeof v === 'string' && VALID_CORRELATION_ID.test(v);
}

/** Version reported by the platform's own tracers (BullMQ telemetry, durable steps). */
export const INSTRUMENTATION_VERSION = '0.1.0';

/** Paths whose requests are not traced: probes, scrapes, and the operator dashboard's polling. */
export const IGNORED_HTTP_PATHS = ['/healthz', '/readyz', '/metrics', '/admin/queues', '/docs', '/openapi.json'];

/**
 * A request URL's path as Express routes it: without the query, lower case (routing ignores case),
 * without a trailing slash. What decides whether a path is traced, logged or shed must read it so, or
 * `/ADMIN/QUEUES?token=…` reaches the dashboard while escaping what guards `/admin/queues`.
 */
export function routedPath(url: string | undefined): string {
  const path = (url ?? '').split('?')[0]!.toLowerCase();
  return path.length > 1 ? path.replace(/\/+$/, '') : path;
}

/** True for `prefix` itself and every path under it, as Express routes them. */
export const isUnder = (url: string | undefined, prefix: string): boolean => {
  const path = routedPath(url);
  return path === prefix || path.startsWith(`${prefix}/`);
};

/** Query parameters whose values never reach a log line or a span (the Bull Board token exchange uses `token`). */
const SECRET_QUERY_PARAMS = new Set(['token', 'access_token', 'password']);

/** A bracket suffix (`[]`, `[0]`, `[a][b]`): qs-style parsers, and many clients, read `token[]=…` as `token`. */
const BRACKET_SUFFIX = /(?:\[[^\]]*\])+$/;

/**
 * Whether a query parameter (its decoded name, any case, with or without a bracket suffix) holds a secret:
 * `token[]=<jwt>` was logged whole while only the exact names were matched. A longer name (`tokens`) is not one.
 * A secret name inside the brackets of another is one too (`user[password]=`, `auth[token]=`, as Rails-style
 * forms nest them); a name that is only brackets (`[token]`) is not.
 */
export const isSecretQueryParam = (name: string): boolean => {
  const lower = name.toLowerCase();
  const base = lower.replace(BRACKET_SUFFIX, '');
  if (SECRET_QUERY_PARAMS.has(base)) return true;
  return base !== '' && [...lower.slice(base.length).matchAll(/\[([^\]]*)\]/g)].some((m) => SECRET_QUERY_PARAMS.has(m[1]!));
};

/**
 * A JSON Web Token in compact form: a JWS (three base64url segments) or a JWE (five), its header JSON (`{"`
 * encodes to `eyJ`), not preceded by another base64url character. Found anywhere in a value, not only as the
 * whole of it: `Bearer eyJ…`, `/admin/queues?token=eyJ…` in a `next=`, `1;token=eyJ…` (a `;` the query parser
 * does not split at), `eyJ….sig%` (a stray percent) hold it whole, as much a credential as under `token`.
 */
const JWT_INSIDE = /(?<![\w-])eyJ[\w-]*(?:\.[\w-]*){2}/;

/** A secret `name=` pair inside a value: a URL's query or fragment in `next=`, or a `;`-separated pair (`a=1;password=x`). */
const holdsSecretPair = (value: string): boolean =>
  value.includes('=') &&
  value.split(/[?&;#]/).some((pair) => {
    const eq = pair.indexOf('=');
    return eq > 0 && isSecretQueryParam(pair.slice(0, eq).trim());
  });

/**
 * Whether a query value (decoded; a repeated parameter's array, or a nested object, any part of it) holds a
 * secret: a JWT anywhere in it, or a secret `name=` pair of a query nested in it. Read decoded up to three
 * times (`%252E` is a dot encoded twice: whoever reads the log decodes it as easily).
 */
export const holdsSecretValue = (value: unknown): boolean =>
  typeof value === 'string'
    ? decodings(value).some((v) => JWT_INSIDE.test(v) || holdsSecretPair(v))
    : typeof value === 'object' && value !== null && Object.values(value).some(holdsSecretValue);

/** A parsed query (req.query) with every secret value replaced: by its name (isSecretQueryParam) or its content (holdsSecretValue). */
export const redactQuery = (query: Record<string, unknown>): Record<string, unknown> =>
  Object.fromEntries(Object.entries(query).map(([k, v]) => [k, isSecretQueryParam(k) || holdsSecretValue(v) ? '[redacted]' : v]));

/**
 * A query name or value decoded as the query parser (querystring.unescape) decodes it: `+` a space, each
 * valid escape decoded, and never a throw — a malformed or non-UTF-8 escape (`%`, `%FF`) elsewhere in the
 * value does not leave the rest of it unread (decodeURIComponent refused the whole value, which then went
 * to the log as it came).
 */
const decoded = (raw: string): string => querystring.unescape(raw.replace(/\+/g, ' '));

/** `raw`, and each further decoding of it while it changes (three at most). */
const decodings = (raw: string): string[] => {
  const out = [raw];
  for (let i = 0; i < 3; i++) {
    const next = querystring.unescape(out[out.length - 1]!);
    if (next === out[out.length - 1]) break;
    out.push(next);
  }
  return out;
};

/** `name=value` pairs split at `separators` (kept), each secret one's value replaced. */
const redactPairs = (pairs: string, separators: RegExp): string =>
  pairs
    .split(separators)
    .map((pair, i) => {
      if (i % 2) return pair; // a separator
      const eq = pair.indexOf('=');
      const name = eq < 0 ? pair : pair.slice(0, eq);
      return decodings(decoded(name)).some(isSecretQueryParam) || (eq >= 0 && holdsSecretValue(decoded(pair.slice(eq + 1)))) ? `${name}=[redacted]` : pair;
    })
    .join('');

/** A URL's parts: before its query, its query (after the first `?` before any `#`), its fragment (after the first `#`). */
const partsOf = (url: string): { head: string; query?: string; fragment?: string } => {
  const hash = url.indexOf('#');
  const beforeHash = hash < 0 ? url : url.slice(0, hash);
  const q = beforeHash.indexOf('?');
  return {
    head: q < 0 ? beforeHash : beforeHash.slice(0, q),
    ...(q < 0 ? {} : { query: beforeHash.slice(q + 1) }),
    ...(hash < 0 ? {} : { fragment: url.slice(hash + 1) }),
  };
};

/**
 * A URL with secret query values replaced: `/admin/queues?token=eyJ…` → `/admin/queues?token=[redacted]`.
 * A parameter is read by its decoded name, as the query parser reads it (`%74oken` is `token`, `token%5B%5D`
 * is `token[]`, a secret too), and a value that is a JWT is replaced whatever its name. The
 * fragment too (`#access_token=…`, split at `&`, `?` and `#`): no parser reads it, but Node keeps a raw
 * request target's fragment in `req.url`, which the request log writes.
 */
export function redactUrl(url: string): string {
  const { head, query, fragment } = partsOf(url);
  return `${head}${query === undefined ? '' : `?${redactPairs(query, /(&)/)}`}${fragment === undefined ? '' : `#${redactPairs(fragment, /([&?#])/)}`}`;
}

/**
 * The `url.query` of an inbound request's server span with secret values redacted as in its log line
 * (redactUrl): the HTTP instrumentation redacts only a few cloud signature names, and by exact spelling.
 * None when the URL has no query (the instrumentation then sets none either); never the fragment.
 */
export function redactedQueryAttribute(url: string | undefined): Record<string, string> {
  const { query } = partsOf(url ?? '');
  return query ? { 'url.query': redactPairs(query, /(&)/) } : {};
}

/**
 * The `url.full` of an outgoing HTTP request's client span without its query (and without user info):
 * a webhook endpoint's URL is a tenant's, and its query often carries the receiver's own credential
 * (`?token=…`), which the HTTP instrumentation redacts only for a few well-known names. Scheme, host,
 * port and path stay, as OTel's HTTP conventions want them.
 */
export function urlWithoutQuery(options: { protocol?: string | null; hostname?: string | null; host?: string | null; port?: string | number | null; path?: string | null }): string {
  const protocol = options.protocol || 'http:';
  let host = options.hostname || options.host || 'localhost';
  if (host.includes(':') && !host.startsWith('[')) host = `[${host}]`;
  const port = String(options.port ?? '');
  const standard = port === '' || (protocol === 'https:' ? port === '443' : port === '80');
  return `${protocol}//${host}${standard ? '' : `:${port}`}${(options.path || '/').split('?')[0]}`;
}

/**
 * Set (true) in the context a webhook attempt POSTs in (delivery-trace.ts): its client span's `url.full`
 * is the receiver's origin only (outgoingUrlFull). A key of the global symbol registry (createContextKey),
 * so register.ts and the application read the same key whatever module instance they load.
 */
export const ORIGIN_ONLY_URL = createContextKey('dealix.url_origin_only');

/**
 * The `url.full` of an outgoing HTTP request's client span (register.ts's startOutgoingSpanHook, called in
 * the caller's context `ctx`). A webhook attempt's POST (ORIGIN_ONLY_URL set): its origin only — scheme,
 * host and port — never its path, where receivers carry their credential (Slack's `/services/T…/B…/<secret>`,
 * Discord's `/api/webhooks/<id>/<token>`), as the platform's events and log lines name an endpoint (ADR 0013).
 * Any other request (none of a tenant's URL: the operator's own): its URL without the query (urlWithoutQuery).
 * This is the only attribute of the span that names the URL (the instrumentation's stable conventions: no
 * `url.path`, `http.target` or `http.url`; its name is the method).
 */
export function outgoingUrlFull(options: Parameters<typeof urlWithoutQuery>[0], ctx: Context): string {
  const full = urlWithoutQuery(options);
  return ctx.getValue(ORIGIN_ONLY_URL) === true ? new URL(full).origin : full;
}
