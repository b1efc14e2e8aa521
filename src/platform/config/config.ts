import { z } from 'zod';
import { Resolver } from 'node:dns';
import { parseDurationMs } from './duration.ts';
import { sslParameters } from '../db/pg-ssl.ts';
import { RUN_RETENTION_FLOOR_MS } from './run-retention-floor.ts';

/**
 * The one schema over the environment. Parsed once at start-up, frozen and passed down;
 * `process.env` is read nowhere else (the architecture check enforces it).
 * Every default here works against the local PostgreSQL and Redis of a development machine.
 */
const duration = (fallback: string, opts: { offOrAtLeastMs?: number; off?: string } = {}) =>
  z
    .union([z.string(), z.number()])
    .default(fallback)
    .transform((v, ctx) => {
      let ms: number;
      try {
        ms = parseDurationMs(v);
      } catch (e) {
        ctx.addIssue({ code: 'custom', message: (e as Error).message });
        return z.NEVER;
      }
      // 0 turns the setting off: a value that is not 0 (any digit but 0 in it) yet below the minimum
      // would turn it off, or close to it, without a word (0.0001 rounds to 0 ms).
      if (opts.offOrAtLeastMs !== undefined && /[1-9]/.test(String(v)) && ms < opts.offOrAtLeastMs) {
        const least = opts.offOrAtLeastMs < 1000 ? `${opts.offOrAtLeastMs}ms` : `${opts.offOrAtLeastMs / 1000}s`;
        ctx.addIssue({ code: 'custom', message: `must be 0 (${opts.off ?? 'off'}) or at least ${least}, not "${v}" (${ms} ms)` });
        return z.NEVER;
      }
      return ms;
    });

/** The most an approval SLA may be configured (APPROVAL_SLA_B / APPROVAL_SLA_C): a year. */
const MAX_APPROVAL_SLA_MS = 365 * 86_400_000;
const approvalSla = (fallback: string) =>
  duration(fallback).refine((ms) => ms >= 1_000 && ms <= MAX_APPROVAL_SLA_MS && ms % 1_000 === 0, 'must be a whole number of seconds between 1s and 365d');
/**
 * A duration's floor, checked at start-up: below it the setting does what no one means (`why`), so the
 * process refuses to start (a config problem, listed with the others) instead of running that way.
 */
function atLeastMs(minMs: number, why: string) {
  const least = minMs % 1000 === 0 ? `${minMs / 1000}s` : `${minMs}ms`;
  return (ms: number, ctx: z.RefinementCtx) => {
    if (ms < minMs) ctx.addIssue({ code: 'custom', message: `must be at least ${least}, not ${ms} ms: ${why}` });
  };
}

const postgresUrl = z
  .string()
  .url()
  .refine((u) => /^postgres(ql)?:\/\//.test(u), 'must be a postgres:// URL')
  // Its TLS parameters as every connection reads them (pg-ssl.ts): a fault stops the start, not the first connection.
  .superRefine((u, ctx) => {
    try {
      sslParameters(u);
    } catch (e) {
      ctx.addIssue({ code: 'custom', message: (e as Error).message });
    }
  });

/** What a boolean variable accepts as true; the telemetry bootstrap (telemetryEnv) reads the same. */
const isTrueText = (v: string | undefined) => v === 'true' || v === '1' || v === 'yes';

const bool = (fallback: boolean) =>
  z
    .enum(['true', 'false', '1', '0', 'yes', 'no', ''])
    .default(fallback ? 'true' : 'false')
    .transform(isTrueText);

const csv = (fallback: string) =>
  z
    .string()
    .default(fallback)
    .transform((v) =>
      v
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean),
    );

/**
 * The readiness rows whose value the matrix may be unable to read (managed Redis refuses CONFIG, some
 * INFO too): only these may be listed in READINESS_ACCEPT_UNKNOWN. src/readiness/redis.checks.ts
 * produces an unknown value for exactly these.
 */
export const READINESS_UNKNOWABLE_ROWS = ['redis-eviction', 'redis-persistence', 'redis-timeout'] as const;
export type ReadinessUnknowableRow = (typeof READINESS_UNKNOWABLE_ROWS)[number];

/** The algorithms JWT_ALGORITHMS may list: a shared secret (JWT_SECRET) verifies the first, a key set (JWT_JWKS_URL) the others. */
const SECRET_ALGORITHMS = ['HS256'] as const;
const JWKS_ALGORITHMS = ['RS256', 'ES256', 'PS256', 'EdDSA'] as const;

export const configSchema = z
  .object({
    NODE_ENV: z.enum(['development', 'test', 'production']).default('development'),
    PORT: z.coerce.number().int().min(0).max(65535).default(3000),
    /**
     * The address the API listens on (an IP address, or a name it resolves to); unset: every interface,
     * as a container or a platform's router needs. `npm run demo` sets 127.0.0.1 for its own API, whose
     * SSRF guard is off.
     */
    API_HOST: z.string().trim().min(1).optional(),
    /**
     * Which peers' X-Forwarded-For / -Proto the API believes (Express's `trust proxy`): `loopback`
     * (default), `false`, `true` (any peer: only behind a proxy that overwrites the headers), a hop
     * count (`1` behind one load balancer, e.g. Heroku's router), or addresses/subnets, comma-separated.
     * It decides `req.secure` (the dashboard's `__Host-` session cookie; plain HTTP gets one on a loopback host only) and the `ip` of security log lines.
     * Here only its characters are checked; the list as Express compiles it, by the API at start (trust-proxy.ts).
     */
    TRUST_PROXY: z
      .string()
      .default('loopback')
      .transform((v, ctx): boolean | number | string => {
        const t = v.trim();
        if (t === 'true') return true;
        if (t === 'false') return false;
        if (/^\d+$/.test(t)) return Number(t);
        if (/^[\w.:/, -]+$/.test(t)) return t;
        ctx.addIssue({ code: 'custom', message: 'true, false, a hop count, or addresses/subnets/loopback|linklocal|uniquelocal, comma-separated' });
        return z.NEVER;
      }),
    LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),

    DATABASE_URL: postgresUrl.default('postgres://dealix_app:dealix_app@127.0.0.1:5432/dealix'),
    MIGRATION_DATABASE_URL: postgresUrl.default('postgres://dealix_owner:dealix_owner@127.0.0.1:5432/dealix'),
    DATABASE_ADMIN_URL: postgresUrl.optional(),
    // Unset: the API pools 10 connections, a worker WORKER_CONCURRENCY x its workflow queues + WORKER_TIMER_CONCURRENCY + 2 (poolMaxFor).
    DATABASE_POOL_MAX: z.coerce.number().int().min(1).max(200).optional(),
    // PostgreSQL's statement_timeout (whole ms); 0 = none. Not 0 yet under 1 ms (0.0001 rounds to 0 ms) is refused rather than read as none.
    DATABASE_STATEMENT_TIMEOUT: duration('30s', { offOrAtLeastMs: 1, off: 'no statement timeout' }),
    // How long past DATABASE_STATEMENT_TIMEOUT a client lets PostgreSQL stay silent while a statement awaits its answer before it drops the connection (coalescing-client.ts); 0 waits for ever.
    DATABASE_ANSWER_MARGIN: duration('10s', { offOrAtLeastMs: 1000, off: 'wait for ever' }),
    // A batch (a group commit's dozens of statements) bounded per statement (a Flush after each that may wait) instead of by the sum; off: ~15 % more CPU per run (docs/performance-history.md, session 32).
    DATABASE_ANSWER_PER_STATEMENT: bool(false),
    // Named prepared statements per connection (ADR 0004); off for a pooler that cannot keep them (PgBouncer < 1.21 in transaction mode).
    DATABASE_PREPARED_STATEMENTS: bool(true),
    // Whole-transaction messages that arrive while others are in flight share one commit (ADR 0007); 0 sends each alone.
    DATABASE_GROUP_COMMIT_IN_FLIGHT: z.coerce.number().int().min(0).max(64).default(2),

    REDIS_URL: z.string().url().default('redis://127.0.0.1:6379'),
    QUEUE_PREFIX: z
      .string()
      .regex(/^[A-Za-z0-9_{}-]{1,64}$/, 'letters, digits, _ - { } only (no ":")')
      .default('dealix'),

    JWT_SECRET: z.string().min(32, 'must be at least 32 characters').optional(),
    // The identity provider's public keys: https in production (over plain http whoever is on the path serves keys of
    // its own, and signs tokens for any tenant and role); http too outside production (a local JWKS); no other scheme.
    JWT_JWKS_URL: z
      .string()
      .url()
      .refine((u) => !URL.canParse(u) || ['http:', 'https:'].includes(new URL(u).protocol), "must be an https:// URL (http:// outside production): the identity provider's key set")
      // fetch refuses a URL with user info (`https://user:pass@idp/…`): not one key set would ever be fetched, every token
      // answered 503, while start-up and readiness passed (the row printing the password). A key set is public.
      .refine((u) => !URL.canParse(u) || (new URL(u).username === '' && new URL(u).password === ''), 'must not carry user info (user:password@): fetch refuses such a URL, so the key set could never be fetched and every token would be refused; a key set is public, put no credential in its URL')
      .optional(),
    JWT_ISSUER: z.string().min(1).default('dealix-dev'),
    JWT_AUDIENCE: z.string().min(1).default('dealix-api'),
    // At least one the key source verifies (JWKS_ALGORITHMS with JWT_JWKS_URL, else SECRET_ALGORITHMS), or start-up stops.
    JWT_ALGORITHMS: csv('').pipe(z.array(z.enum([...SECRET_ALGORITHMS, ...JWKS_ALGORITHMS]))),
    JWT_CLOCK_TOLERANCE: duration('5s'),
    // The longest a token is accepted after its `iat` (ADR 0018), whatever its `exp`; a token without `iat`
    // is refused. It bounds how long a not-before revocation can refuse anything, so the prune can drop
    // one that long (plus the tolerance and REVOKED_ID_KEPT_AFTER_EXPIRY) after its time. 0: no limit
    // (a token without iat is accepted, and not-before revocations are kept for ever).
    JWT_MAX_TOKEN_LIFETIME: duration('24h', { offOrAtLeastMs: 60_000, off: 'no limit: not-before revocations are never pruned' }).refine(
      (ms) => ms <= 366 * 86_400_000,
      'at most 366d (a token issued before a not-before revocation may be accepted up to that long after it, once the row is pruned)',
    ),
    // How long a verified token is answered from memory (ADR 0006): at most 60 s, so a key removed
    // from the JWKS stops a token already seen within this much after the JWKS cache's own refresh.
    JWT_VERIFIED_TOKEN_TTL: duration('60s').refine((ms) => ms <= 60_000, 'at most 60s (ADR 0006)'),
    // How long the keys fetched from JWT_JWKS_URL are used before they are fetched again (a token naming
    // an unknown kid also refetches them, at most every 30 s): bounds how soon a removed key is refused.
    // How often every API process reads the whole token revocation list again (ADR 0018), whatever Redis
    // announced: the bound on how late a revocation whose announcement was lost takes effect.
    TOKEN_REVOCATION_RECONCILE: duration('30s').refine((ms) => ms >= 1_000 && ms <= 3_600_000, 'between 1s and 1h (a revocation whose announcement was lost takes effect up to that much later)'),
    JWT_JWKS_CACHE_MAX_AGE: duration('10m').refine((ms) => ms >= 1_000 && ms <= 3_600_000, 'between 1s (the JWKS is then fetched about once a second) and 1h (a removed key is refused up to that much later)'),
    // How much longer than JWT_JWKS_CACHE_MAX_AGE the keys held are still used while JWT_JWKS_URL cannot be
    // fetched (ADR 0006): an identity provider's outage up to this long is no API outage. Only while the
    // refetches fail: one that answers replaces the keys at once. 0: none (503 once the cache is past its age).
    JWT_JWKS_MAX_STALE: duration('24h').refine((ms) => ms <= 7 * 86_400_000, 'at most 7d (a key removed from a JWKS that cannot be fetched is used up to that much longer)'),

    IDEMPOTENCY_TTL: duration('24h'),
    // Below 1 s a retry takes over a key whose first request is still at work (its claim, handler and
    // completion take about that long at the tail under load): the handler runs twice, LEASE_LOST rolls one back.
    IDEMPOTENCY_LEASE: duration('60s').superRefine(atLeastMs(1_000, 'a retry of the request would take its key over while it still runs (docs/api.md, *Idempotency*)')),

    // Benchmarked (docs/performance-history.md, npm run bench:pairs): a run job spends most of its time waiting for
    // PostgreSQL, one step after another. With group commit (ADR 0007) more jobs per process make larger
    // groups — fewer commits and WAL flushes per run: on two cores 16 ran 14-16 % more runs than 8 or 12
    // for 12-13 % less CPU per run (26 of 26 alternating pairs, session 42), and 24 no more than 16.
    // (Before group commit, session 8, 8 had matched 16 with less PostgreSQL CPU.)
    WORKER_CONCURRENCY: z.coerce.number().int().min(1).max(1000).default(16),
    // Timer jobs (approval SLA timers) each worker process runs at once on the timers queue, which every
    // worker serves apart from the run queues (ADR 0015): a timer that comes due waits only behind other
    // timers, never behind a run backlog. Each holds a connection for one short transaction.
    WORKER_TIMER_CONCURRENCY: z.coerce.number().int().min(1).max(100).default(4),
    // How many times an SLA timer that fires before its approval step committed the request (expire's
    // no_request) is put off (1 s doubling to 10 s) before it is spent (ADR 0015, amendment): 10 covers
    // about 75 s, past DATABASE_STATEMENT_TIMEOUT's 30 s default; raise it with a longer statement timeout.
    // A spent timer is re-created by the sweeper once the run waits (dealix_sla_timers_spent_total).
    SLA_NO_REQUEST_DEFERRALS: z.coerce.number().int().min(1).max(1000).default(10),
    // The workflow queues a worker process serves (comma-separated); unset: every one. Lets a dyno type
    // serve one queue (WORKER_QUEUES=partner-offboarding) and be scaled apart; the timers, maintenance and
    // webhooks queues are always served (worker-runtime.ts).
    WORKER_QUEUES: csv('').pipe(z.array(z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'queue names: letters, digits, _ - only'))),
    // Workflow versions retired for good, as `name@vN`, comma-separated (ADR 0008, *Retiring a version*):
    // no instance of this deployment registers them any more, nor will. A failed run of one is then
    // refused a retry with 409 workflow_version_retired (submit it again) instead of 503 for ever, and
    // a run job of one fails its run instead of being put off for ever. Set once the last process that
    // registered the version is gone; a process that registers a version listed here does not start.
    WORKFLOW_VERSIONS_RETIRED: csv(''),
    // A SIGKILLed worker's step resumes elsewhere after about lock + half the stalled interval (ADR 0002).
    // Floors against 0 and its like only; the readiness row worker-settings wants a lock of 1-60 s.
    WORKER_LOCK_DURATION: duration('2s').superRefine(atLeastMs(100, "every job's lock would lapse before BullMQ renews it (at half the lock), and its step run again elsewhere")),
    WORKER_STALLED_INTERVAL: duration('500ms').superRefine(atLeastMs(100, 'BullMQ would look for stalled jobs in Redis in a tight loop')),
    WORKER_MAX_STALLED_COUNT: z.coerce.number().int().min(1).max(100).default(10),
    // Times one step of a run may lose its worker mid-execution (a stalled run job: SIGKILL, OOM, a crash in
    // native code) before the run fails with step_crashed_worker instead of crash-looping the fleet (ADR 0016).
    // Counted in PostgreSQL, so a sweeper's re-enqueue does not reset it. Well above what deploys cause (a
    // graceful stop hands its jobs back: no stall); at most WORKER_MAX_STALLED_COUNT (readiness checks it).
    STEP_MAX_CRASHES: z.coerce.number().int().min(1).max(100).default(5),
    WORKER_SHUTDOWN_GRACE: duration('10s'),
    // Run jobs one tenant may execute at once, over every workflow queue and worker process (ADR 0012):
    // past it the tenant's further run jobs are parked until one of its runs gives a slot back. 0 = off
    // (no Redis command is added to a run job's path).
    WORKER_MAX_ACTIVE_RUNS_PER_TENANT: z.coerce.number().int().min(0).max(100_000).default(0),
    SWEEPER_INTERVAL: duration('15s').superRefine(atLeastMs(1_000, "the sweeper's cross-tenant reads would run back to back (setInterval), and the tenant limits' reseed with them")),
    SWEEPER_MIN_AGE: duration('10s'),
    // Finished jobs BullMQ keeps in Redis for Bull Board: the newest this many, and none older than an
    // hour (completed) or a week (failed). PostgreSQL keeps every run; a completed run job holds about
    // 3 KB of Redis, so an age bound alone grows with throughput (at 250 runs/s, ~2.7 GB an hour).
    QUEUE_KEEP_COMPLETED: z.coerce.number().int().min(0).max(10_000_000).default(10_000),
    QUEUE_KEEP_FAILED: z.coerce.number().int().min(0).max(10_000_000).default(20_000),
    // How long PostgreSQL keeps a run that ended (its row and checkpoints; domain records and evidence
    // stay): unset or 0 keeps every run forever. The maintenance queue deletes older ones (ADR 0011).
    // At most 100 years: now() minus far more is beyond PostgreSQL's timestamps, and every pass would fail.
    // Not 0 yet under a second (0.0001 rounds to 0 ms) is refused rather than read as off.
    RUN_RETENTION: duration('0', { offOrAtLeastMs: 1000, off: 'keep runs forever' }).refine((ms) => ms <= 36_500 * 86_400_000, 'at most 36500d (100 years; 0 keeps runs forever)'),

    // Whole seconds (an approval policy keeps its SLAs so), 1s to 365d: 0 gave every request a 1 s
    // deadline without a word, and 300000000d a deadline past what a Date can write, failing every run of the class.
    APPROVAL_SLA_B: approvalSla('24h'),
    APPROVAL_SLA_C: approvalSla('72h'),
    /** How long a proposed policy change that loosens the policy awaits a second admin before it expires (ADR 0010). */
    APPROVAL_POLICY_CHANGE_TTL: duration('72h').refine((ms) => ms >= 1_000 && ms <= 90 * 86_400_000, 'between 1s and 90d'),

    /** Webhook receivers on loopback, private, link-local, unique-local or multicast addresses are refused unless true (development, tests). */
    WEBHOOK_ALLOW_PRIVATE_NETWORKS: bool(false),
    /** How long one delivery attempt (connect, send, answer) may take before it counts as failed. */
    WEBHOOK_TIMEOUT: duration('10s').refine((ms) => ms >= 100 && ms <= 60_000, 'between 100ms and 60s'),
    /**
     * The bound of resolving a webhook receiver's host name (A and AAAA, every server and try), at an endpoint's
     * create or update (then 503) and at each delivery attempt (then a failed attempt, retried); at most
     * WEBHOOK_TIMEOUT (the smaller applies). Resolved by c-ares, on no threadpool thread (ADR 0013).
     */
    WEBHOOK_DNS_TIMEOUT: duration('5s').refine((ms) => ms >= 100 && ms <= 60_000, 'between 100ms and 60s'),
    /**
     * The name servers webhook receivers' host names are resolved with (`ip`, `ip:port`, `[ipv6]:port`, comma-separated);
     * unset: the system's (/etc/resolv.conf, as dns.getServers()). The hosts file is read first either way.
     */
    WEBHOOK_DNS_SERVERS: csv('').superRefine((servers, ctx) => {
      try {
        if (servers.length > 0) new Resolver().setServers(servers);
      } catch (e) {
        ctx.addIssue({ code: 'custom', message: `name servers as ip or ip:port ([ipv6]:port), comma-separated: ${(e as Error).message}` });
      }
    }),
    /** Delivery attempts per webhook before it is given up (`failed`). */
    WEBHOOK_MAX_ATTEMPTS: z.coerce.number().int().min(1).max(50).default(15),
    /** First retry delay; each next one doubles, up to 4h, with jitter (15 attempts span about 24 h). */
    WEBHOOK_RETRY_BASE: duration('30s').refine((ms) => ms >= 10 && ms <= 3_600_000, 'between 10ms and 1h'),
    /**
     * How often the redelivery pass looks for pending deliveries whose job Redis lost (ADR 0013). Each
     * pass reads every overdue row: shorter finds a loss sooner and reads more often.
     */
    WEBHOOK_REDELIVERY_INTERVAL: duration('60s').refine((ms) => ms >= 1_000 && ms <= 3_600_000, 'between 1s and 1h'),
    /** Enabled webhook endpoints a tenant may have: each run end inserts, and POSTs, one delivery per subscribed endpoint. */
    WEBHOOK_MAX_ENDPOINTS: z.coerce.number().int().min(1).max(100).default(10),
    /**
     * Deliveries a tenant may have pending from resends at once (ADR 0013, *Resending*): a resend at it is
     * 409 `webhook_resend_backlog`, and a bulk resend below it resends at most what is left under it. Every
     * worker serves one webhook queue in arrival order: unbounded, one tenant's bulk resends (1,000 each)
     * queued ahead of every other tenant's fresh deliveries.
     */
    WEBHOOK_RESEND_MAX_PENDING: z.coerce.number().int().min(1).max(100_000).default(2000),
    /**
     * Deliveries a tenant may resend in any sliding hour, single and bulk resends together (ADR 0013,
     * *Resending*): past it a resend is 429 `webhook_resend_rate_limited` with Retry-After, and a bulk
     * resend resends at most what is left. The pending bound above drains at the receivers' pace: without
     * this, an admin could aim 1,000 signed POSTs per request, request after request, at any host set as
     * an endpoint's URL. 0 = off (no Redis command).
     */
    WEBHOOK_RESEND_MAX_PER_HOUR: z.coerce.number().int().min(0).max(1_000_000).default(5000),
    /**
     * Delivery attempts one endpoint may have in flight at once, over every worker process (ADR 0013):
     * past it the endpoint's further deliveries are parked until one of its attempts ends, so one
     * tenant's slow receiver cannot fill every worker's webhook slots. 0 = off (no Redis command added).
     */
    WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT: z.coerce.number().int().min(0).max(1000).default(4),
    /**
     * Delivery attempts one tenant may have in flight at once, over all its endpoints and every worker
     * process (ADR 0013): past it the tenant's further deliveries are parked until one of its attempts
     * ends, so one tenant's WEBHOOK_MAX_ENDPOINTS slow receivers (each at the per-endpoint cap) cannot
     * fill every worker's webhook slots. 6 by default: above the per-endpoint default (one endpoint never
     * meets it), below one default worker's 16 webhook slots (WORKER_CONCURRENCY; 8 when this was chosen),
     * so a tenant's slow endpoints leave at least 10 of each worker's slots to the others. 0 = off.
     */
    WEBHOOK_MAX_IN_FLIGHT_PER_TENANT: z.coerce.number().int().min(0).max(10_000).default(6),
    /**
     * An endpoint whose deliveries have failed without a 2xx in between for this long is disabled at its
     * next failed attempt (`disabled_reason: failing`; the tenant's admin re-enables it). 0 or `off`: never.
     */
    WEBHOOK_DISABLE_AFTER: z
      .preprocess((v) => (v === 'off' ? '0' : v), duration('5d', { offOrAtLeastMs: 1000, off: 'or off: never disable' }))
      .refine((ms) => ms <= 365 * 86_400_000, 'at most 365d (0 or off: never disable)'),

    RATE_LIMIT_PER_MINUTE: z.coerce.number().int().min(0).default(600),
    MAX_RUNS_IN_FLIGHT_PER_TENANT: z.coerce.number().int().min(0).default(10_000),
    BODY_LIMIT: z.string().regex(/^\d+(b|kb|mb)$/i).default('64kb'),
    /** Concurrent API requests before the front door sheds load with 503 (0 disables). */
    API_MAX_INFLIGHT: z.coerce.number().int().min(0).max(100_000).default(64),
    /** A tenant's share of them: past it that tenant gets 429, so it cannot shed the others (0 disables). */
    API_MAX_INFLIGHT_PER_TENANT: z.coerce.number().int().min(0).max(100_000).default(16),
    /**
     * A tenant's share of the API process's database connections: at most this many of its requests do
     * database work at once; more wait (holding none) and are answered 503 when none frees in time (ADR
     * 0012). Unset: half the API's pool (DATABASE_POOL_MAX, 10 by default: 5), at least 1; 0 = no share.
   * More than the API's pool stops the API at start (apiConfigProblems: the API's pool, not a worker's).
     */
    API_MAX_DB_CONNECTIONS_PER_TENANT: z.coerce.number().int().min(0).max(200).optional(),
    /** How long a request may take to arrive whole (headers and body): a slow upload frees its in-flight slot then (408). */
    // Node's requestTimeout (whole ms; 0 = none): not 0 yet under 1 ms is refused rather than read as none.
    API_REQUEST_TIMEOUT: duration('30s', { offOrAtLeastMs: 1, off: 'no request timeout' }),
    /**
     * SIGTERM to the API: this long /readyz answers 503 while the API goes on serving (new connections
     * too), for a load balancer that routes by readiness (Kubernetes, an ALB) to stop sending requests
     * before the listener closes; then the drain (WORKER_SHUTDOWN_GRACE). 0 (default): the listener closes
     * at once, as Heroku's router (which stops routing at the signal) and compose want. At most 5 min.
     */
    API_SHUTDOWN_DELAY: duration('0').superRefine((ms, ctx) => {
      if (ms > 300_000) ctx.addIssue({ code: 'custom', message: `at most 5m, not ${ms} ms: the platform kills the process long before (Kubernetes' terminationGracePeriodSeconds must exceed it plus WORKER_SHUTDOWN_GRACE)` });
    }),

    BULL_BOARD_READ_ONLY: bool(true),
    OPERATOR_USER: z.string().min(1).optional(),
    OPERATOR_PASSWORD: z.string().min(12, 'must be at least 12 characters').optional(),
    /** Failed operator (HTTP Basic) logins per client address in 15 minutes before it gets 429 for the rest of them; 0 = no limit. */
    OPERATOR_LOGIN_MAX_FAILURES: z.coerce.number().int().min(0).default(10),

    OTEL_SDK_DISABLED: bool(false),
    OTEL_EXPORTER_OTLP_ENDPOINT: z.string().url().optional(),
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: z.string().url().optional(),
    OTEL_TRACES_EXPORTER: z.string().optional(),
    OTEL_SERVICE_NAME: z.string().optional(),
    OTEL_EXPORTER_OTLP_PROTOCOL: z.enum(['http/json', 'http/protobuf', 'grpc']).optional(),
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: z.enum(['http/json', 'http/protobuf', 'grpc']).optional(),
    /**
     * Readiness rows (comma-separated, READINESS_UNKNOWABLE_ROWS only) whose value the matrix cannot read
     * here — a managed Redis refuses CONFIG — and that the operator verified where it is set (the
     * provider's parameter group): such a row is ACCEPTED, not FAIL, and names READINESS_ACCEPT_NOTE. A
     * value read and found wrong still fails. Read by `npm run readiness` only; any other id stops every
     * process, as a typo would otherwise accept nothing without a word.
     */
    READINESS_ACCEPT_UNKNOWN: csv('').pipe(
      z.array(z.enum(READINESS_UNKNOWABLE_ROWS, { error: (issue) => `"${String(issue.input)}" is no readiness row whose value can be unknown (${READINESS_UNKNOWABLE_ROWS.join(', ')})` })),
    ),
    /**
     * Who verified the accepted rows, where and when: shown in every ACCEPTED row's reason (the audit trail
     * of the acceptance); required when READINESS_ACCEPT_UNKNOWN lists rows. One line: a newline or other control character (C0, DEL, C1) would print forged
     * rows or a forged READY line into the matrix a CI log shows.
     */
    READINESS_ACCEPT_NOTE: z
      .string()
      .trim()
      .min(1)
      .max(500)
      .refine((v) => !/[\u0000-\u001f\u007f-\u009f]/.test(v), 'must be one line without control characters')
      .optional(),
    /** Workers serve their Prometheus metrics (step durations) on this port; unset = off, 0 = an ephemeral port. */
    WORKER_METRICS_PORT: z.coerce.number().int().min(0).max(65535).optional(),
    /**
     * The address that metrics port listens on (an IP address, or a name it resolves to); unset: every
     * interface, as API_HOST, since Prometheus scrapes each worker from another machine or pod
     * (`worker-1:9464`). `npm run demo` sets 127.0.0.1 for its own worker.
     */
    WORKER_METRICS_HOST: z.string().trim().min(1).optional(),
  })
  .superRefine((c, ctx) => {
    if (c.READINESS_ACCEPT_UNKNOWN.length > 0 && !c.READINESS_ACCEPT_NOTE) {
      // An acceptance is the operator's word in place of a value read: it names who verified what, where and when.
      ctx.addIssue({ code: 'custom', path: ['READINESS_ACCEPT_NOTE'], message: 'required when READINESS_ACCEPT_UNKNOWN lists rows: who verified which values, where and when (the acceptance\'s audit trail, shown in each ACCEPTED row)' });
    }
    if (!c.JWT_SECRET && !c.JWT_JWKS_URL) {
      ctx.addIssue({ code: 'custom', path: ['JWT_SECRET'], message: 'set JWT_SECRET (HS256, development) or JWT_JWKS_URL (RS256/ES256)' });
    }
    // What the verifier's key source can check (jwt.ts): a JWKS, which wins over JWT_SECRET, holds public keys
    // only; a shared secret verifies HS256 only. A list of none of these started, then answered every token 401.
    const usable: readonly string[] = c.JWT_JWKS_URL ? JWKS_ALGORITHMS : SECRET_ALGORITHMS;
    if (c.JWT_ALGORITHMS.length > 0 && !c.JWT_ALGORITHMS.some((a) => usable.includes(a))) {
      const source = c.JWT_JWKS_URL
        ? `JWT_JWKS_URL${c.JWT_SECRET ? ' (it wins over JWT_SECRET)' : ''}, whose keys verify ${JWKS_ALGORITHMS.join(', ')}`
        : `JWT_SECRET (no JWT_JWKS_URL), which verifies ${SECRET_ALGORITHMS.join(', ')} only`;
      ctx.addIssue({ code: 'custom', path: ['JWT_ALGORITHMS'], message: `${c.JWT_ALGORITHMS.join(',')} lists no algorithm the key source verifies: tokens are checked against ${source}; every token would be refused` });
    }
    if (c.NODE_ENV === 'production' && jwksOverPlainHttp(c.JWT_JWKS_URL)) {
      ctx.addIssue({ code: 'custom', path: ['JWT_JWKS_URL'], message: `must be https in production (it is ${new URL(c.JWT_JWKS_URL!).protocol}//): ${JWKS_OVER_HTTP_RISK}; ${JWKS_HTTPS_REMEDY}` });
    }
    if (c.NODE_ENV === 'production' && c.JWT_SECRET && !c.JWT_JWKS_URL) {
      ctx.addIssue({ code: 'custom', path: ['JWT_JWKS_URL'], message: 'production verifies tokens through JWT_JWKS_URL, not a shared secret' });
    }
    if (c.IDEMPOTENCY_TTL < c.IDEMPOTENCY_LEASE) {
      // A key forgotten while its first request still holds it: a duplicate would take it over as a new request.
      ctx.addIssue({ code: 'custom', path: ['IDEMPOTENCY_TTL'], message: `must be at least IDEMPOTENCY_LEASE (${c.IDEMPOTENCY_LEASE} ms): a key must outlive the lease of the request that holds it` });
    }
    // Under both bounds, the larger is named: naming IDEMPOTENCY_TTL when it is under the floor sent the
    // operator to a value the next start refused again.
    if (c.RUN_RETENTION > 0 && c.RUN_RETENTION < c.IDEMPOTENCY_TTL && c.IDEMPOTENCY_TTL >= RUN_RETENTION_FLOOR_MS) {
      // A keyed submission's replay names its run for IDEMPOTENCY_TTL: the run must still be there to read.
      ctx.addIssue({ code: 'custom', path: ['RUN_RETENTION'], message: `must be 0 (keep runs forever) or at least IDEMPOTENCY_TTL (${c.IDEMPOTENCY_TTL} ms): a replayed submission names its run as long as its key is kept` });
    } else if (c.RUN_RETENTION > 0 && c.RUN_RETENTION < RUN_RETENTION_FLOOR_MS) {
      // The database keeps every ended run, and every settled webhook delivery (RUN_RETENTION is theirs too), a day
      // whatever the setting (ADR 0011, amendments "A floor under retention" and "The floor's clock is the database's").
      ctx.addIssue({ code: 'custom', path: ['RUN_RETENTION'], message: 'must be 0 (keep runs forever) or at least 24h: the database keeps every ended run that long (ADR 0011; releases before the floor accepted down to IDEMPOTENCY_TTL)' });
    }
    if (Boolean(c.OPERATOR_USER) !== Boolean(c.OPERATOR_PASSWORD)) {
      ctx.addIssue({ code: 'custom', path: ['OPERATOR_PASSWORD'], message: 'OPERATOR_USER and OPERATOR_PASSWORD go together' });
    }
  });

export type Config = Readonly<z.output<typeof configSchema>>;

/**
 * The connections a process pools: DATABASE_POOL_MAX when set, else the API's 10, or a worker's one
 * connection for every transaction it may hold at once — WORKER_CONCURRENCY run jobs on each of the
 * `runQueues` workflow queues it serves (one BullMQ Worker per queue, each step a transaction),
 * WORKER_TIMER_CONCURRENCY timers (one short transaction each, ADR 0015: not counted, a timer waited
 * behind run jobs for a connection), and two for the sweeper and maintenance. Webhook deliveries are
 * not counted, and need not be: a delivery holds at most one connection at a time, for one of its two
 * short transactions (its read, then after the POST its record), never while it waits for its receiver
 * (ADR 0013; worker-pool.test.ts). At most WORKER_CONCURRENCY of those transactions are in flight at
 * once (one per webhook slot), so a timer or step that needs a connection just then waits behind at
 * most that many short transactions, never through a receiver's latency. Counting them would add
 * WORKER_CONCURRENCY connections to every worker's pool (38 to 54 with the defaults) for that.
 */
export function poolMaxFor(
  config: Pick<Config, 'DATABASE_POOL_MAX' | 'WORKER_CONCURRENCY' | 'WORKER_TIMER_CONCURRENCY'>,
  service: 'api' | 'worker' | 'tool',
  runQueues: number,
): number {
  if (config.DATABASE_POOL_MAX !== undefined) return config.DATABASE_POOL_MAX;
  return service === 'worker' ? config.WORKER_CONCURRENCY * Math.max(1, runQueues) + config.WORKER_TIMER_CONCURRENCY + 2 : 10;
}

/**
 * The problems of the settings only the API reads, against the API's pool (poolMaxFor): the API refuses
 * to start on them (createContainer, as the worker on WORKER_QUEUES), `npm run readiness` fails its
 * config row. Not in the schema: a worker reads the same variables with a DATABASE_POOL_MAX of its own,
 * which may be below the API's share (a share means nothing to a worker).
 */
export function apiConfigProblems(
  config: Pick<Config, 'API_MAX_DB_CONNECTIONS_PER_TENANT' | 'DATABASE_POOL_MAX' | 'WORKER_CONCURRENCY' | 'WORKER_TIMER_CONCURRENCY' | 'API_MAX_INFLIGHT' | 'API_MAX_INFLIGHT_PER_TENANT'>,
): string[] {
  const problems: string[] = [];
  const pool = poolMaxFor(config, 'api', 0);
  const share = config.API_MAX_DB_CONNECTIONS_PER_TENANT;
  // Above the pool one tenant's requests may hold every connection, as with the share off (ADR 0012,
  // amendment), while the setting reads as a bound: refused rather than clamped, so it says what it does.
  if (share !== undefined && share > pool) {
    const poolSetting = config.DATABASE_POOL_MAX === undefined ? 'DATABASE_POOL_MAX unset' : `DATABASE_POOL_MAX=${pool}`;
    problems.push(`API_MAX_DB_CONNECTIONS_PER_TENANT: ${share} is more than the API's pool of ${pool} connections (${poolSetting}): one tenant could hold all of them, so the share would bound nothing; set it to at most ${pool} (or raise DATABASE_POOL_MAX), or 0 to turn the share off`);
  }
  // A tenant's share of the in-flight places at or above the process's cap: one tenant may take every place and
  // the others are shed (503), as with the share off, while it reads as a bound. 0 is either setting's explicit
  // off and is kept: with API_MAX_INFLIGHT=0 there is no process cap to take, and the share still bounds a tenant.
  const inFlight = config.API_MAX_INFLIGHT;
  const perTenant = config.API_MAX_INFLIGHT_PER_TENANT;
  if (inFlight > 0 && perTenant > 0 && perTenant >= inFlight) {
    problems.push(`API_MAX_INFLIGHT_PER_TENANT: ${perTenant} is not below API_MAX_INFLIGHT (${inFlight}): one tenant could take every in-flight place and the others would be shed with 503, so the share would bound nothing; set it below ${inFlight} (or raise API_MAX_INFLIGHT), or 0 to turn the share off`);
  }
  return problems;
}

/**
 * The development JWT secrets this repository publishes (.env.example, docker-compose.yml): anyone can
 * sign a token for any tenant and role with them. Outside production nothing refuses them (the quick
 * start uses them), so the readiness row `jwt-keys` fails and the API warns when one is in use.
 */
export const PUBLISHED_JWT_SECRETS: readonly string[] = ['change-me-dev-secret-at-least-32-characters', 'compose-dev-secret-change-me-0123456789'];

/** Tokens are verified with a secret published in this repository (JWT_JWKS_URL, when set, takes precedence over it). */
export function usesPublishedJwtSecret(config: Pick<Config, 'JWT_SECRET' | 'JWT_JWKS_URL'>): boolean {
  return !config.JWT_JWKS_URL && config.JWT_SECRET !== undefined && PUBLISHED_JWT_SECRETS.includes(config.JWT_SECRET);
}

/**
 * JWT_JWKS_URL is a URL fetched without TLS (http:). Production refuses it (the schema at start, the readiness row
 * `jwt-keys`), as it refuses webhooks over http and a database without TLS; outside production a local JWKS over http
 * stays allowed. jose fetches the key set without following redirects, so an https URL is not downgraded by one.
 */
export function jwksOverPlainHttp(url: string | undefined): boolean {
  return url !== undefined && URL.canParse(url) && new URL(url).protocol !== 'https:';
}

/** Why production refuses a JWKS over plain http, and what to set instead (start-up's error and the readiness row say both). */
export const JWKS_OVER_HTTP_RISK = 'whoever is on the path to the identity provider can serve keys of its own and sign tokens for any tenant and role';
export const JWKS_HTTPS_REMEDY = "set JWT_JWKS_URL to the identity provider's https:// key set URL";

/**
 * The database roles' passwords this repository publishes (migrations/bootstrap/roles.sql creates the
 * roles with them; .env.example and docker-compose.yml connect with them). Fine on a laptop or in
 * compose, where PostgreSQL publishes no port; in production the readiness row `database-credentials`
 * fails while a database URL still carries one (docs/runbook.md, "Migrate": create the roles with
 * passwords of your own).
 */
export const PUBLISHED_DATABASE_PASSWORDS: readonly string[] = ['dealix_app', 'dealix_owner'];

/** The database URL settings whose password is one PUBLISHED_DATABASE_PASSWORDS holds (a URL without a password, as with .pgpass or peer authentication, is not). */
export function settingsWithPublishedDatabasePassword(config: Pick<Config, 'DATABASE_URL' | 'MIGRATION_DATABASE_URL' | 'DATABASE_ADMIN_URL'>): string[] {
  const settings = ['DATABASE_URL', 'MIGRATION_DATABASE_URL', 'DATABASE_ADMIN_URL'] as const;
  return settings.filter((name) => {
    const url = config[name];
    if (!url) return false;
    const password = URL.canParse(url) ? decodeURIComponent(new URL(url).password) : '';
    return password !== '' && PUBLISHED_DATABASE_PASSWORDS.includes(password);
  });
}

export class ConfigError extends Error {
  readonly problems: string[];
  constructor(problems: string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

/** Parses an environment (normally `process.env`) into a frozen Config, or throws naming every bad variable. */
export function parseConfig(env: Record<string, string | undefined>): Config {
  // Empty strings mean "unset", as in most .env tooling.
  const cleaned = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ''));
  const result = configSchema.safeParse(cleaned);
  if (!result.success) {
    throw new ConfigError(result.error.issues.map((i) => `${i.path.join('.') || '(env)'}: ${i.message}`));
  }
  const config = result.data;
  if (config.JWT_ALGORITHMS.length === 0) {
    config.JWT_ALGORITHMS = config.JWT_JWKS_URL ? ['RS256', 'ES256'] : ['HS256'];
  }
  // Lists too: a pushed 'none' into JWT_ALGORITHMS must be impossible, not merely unlikely.
  for (const v of Object.values(config)) if (Array.isArray(v)) Object.freeze(v);
  return Object.freeze(config);
}

/** The only place that reads `process.env`. A bad or missing variable stops start-up, naming each one. */
export function loadConfig(): Config {
  try {
    return parseConfig(process.env);
  } catch (e) {
    return exitOnConfigError(e);
  }
}

/**
 * A ConfigError ends the process as loadConfig's do: its message alone on stderr (no stack trace), exit 1.
 * Anything else is rethrown. For settings checked once the modules are known (WORKER_QUEUES against the
 * workflows' queues, in createContainer): `await createContainer(…).catch(exitOnConfigError)`.
 */
export function exitOnConfigError(e: unknown): never {
  if (e instanceof ConfigError) {
    console.error(e.message);
    process.exit(1);
  }
  throw e;
}

/**
 * This process's environment (empty values dropped) over `defaults`, for a tool that starts the
 * platform's own processes (npm run demo): parse it with parseConfig and hand it to the children.
 */
export function environmentWith(defaults: Record<string, string>): Record<string, string> {
  const set = Object.entries(process.env).filter((e): e is [string, string] => e[1] !== undefined && e[1] !== '');
  return { ...defaults, ...Object.fromEntries(set) };
}

/** Like loadConfig, but throws the ConfigError instead of exiting: the readiness matrix reports it as a row. */
export function readConfig(): Config {
  return parseConfig(process.env);
}

/**
 * The variables Node itself reads that the platform judges but never uses as settings: NODE_TLS_REJECT_UNAUTHORIZED
 * (tls-verification.ts: a start-up warning and the readiness row `tls-verification` in production).
 */
export function nodeTlsEnv(): Pick<NodeJS.ProcessEnv, 'NODE_TLS_REJECT_UNAUTHORIZED'> {
  return { NODE_TLS_REJECT_UNAUTHORIZED: process.env.NODE_TLS_REJECT_UNAUTHORIZED };
}

export interface TelemetryEnv {
  disabled: boolean;
  serviceName: string | undefined;
  /** OTEL_TRACES_EXPORTER as the SDK reads it (tracesExportersOf): the exporters to build, none when export is off. */
  tracesExporters: string[];
  /** OTEL_TRACES_EXPORTER puts `none` beside other names (tracesExportersOf): said at start, and a readiness failure. */
  tracesExportersMixed: boolean;
  /** OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf. */
  tracesProtocol: string;
  /** Whether OTEL_TRACES_SAMPLER is set (then the SDK's sampler from the environment is used). */
  samplerFromEnv: boolean;
  /** OTEL_BSP_* batch span processor settings (undefined: the SDK default). */
  batch: { scheduledDelayMillis?: number; maxQueueSize?: number; maxExportBatchSize?: number; exportTimeoutMillis?: number };
}

/** The OTEL_TRACES_EXPORTER names the platform builds an exporter for (span-export.ts); any other exports nothing. */
export const SUPPORTED_TRACES_EXPORTERS = ['otlp', 'console', 'none'];

/**
 * OTEL_TRACES_EXPORTER read exactly as the OpenTelemetry SDK's NodeSDK reads it when it builds the exporters
 * itself (@opentelemetry/sdk-node, getSpanProcessorsFromEnv): names trimmed, empty ones, `null` and repeats
 * dropped; nothing left: `otlp`; `none` first: no exporter at all; `none` after another name: `otlp` alone,
 * the other names dropped too (the SDK only warns, through diagnostics that are off by default). register.ts
 * gives the SDK its own processors (span-export.ts), so the SDK never reads the variable: this does, for it
 * and for the readiness row `telemetry`, so that a list means what the SDK's documentation says.
 * (sdk-node's newer startNodeSdkFromEnv reads `none` anywhere as off; the platform starts a NodeSDK.)
 */
export function tracesExportersOf(raw: string | undefined): { exporters: string[]; mixed: boolean } {
  const names = [...new Set((raw ?? '').split(',').map((s) => s.trim()).filter((s) => s && s !== 'null'))];
  const mixed = names.includes('none') && names.length > 1;
  if (names[0] === 'none') return { exporters: [], mixed };
  if (!names.length || mixed) return { exporters: ['otlp'], mixed };
  return { exporters: names, mixed };
}

/** Raw OpenTelemetry variables for the SDK bootstrap, which must run before the application is loaded. */
export function telemetryEnv(): TelemetryEnv {
  const env = process.env;
  const v = env.OTEL_SDK_DISABLED;
  const positive = (name: string) => {
    const n = Number(env[name]);
    return env[name] && Number.isFinite(n) && n > 0 ? n : undefined;
  };
  const batch: TelemetryEnv['batch'] = {};
  const delay = positive('OTEL_BSP_SCHEDULE_DELAY');
  const queue = positive('OTEL_BSP_MAX_QUEUE_SIZE');
  const size = positive('OTEL_BSP_MAX_EXPORT_BATCH_SIZE');
  const timeout = positive('OTEL_BSP_EXPORT_TIMEOUT');
  if (delay !== undefined) batch.scheduledDelayMillis = delay;
  if (queue !== undefined) batch.maxQueueSize = queue;
  if (size !== undefined) batch.maxExportBatchSize = size;
  if (timeout !== undefined) batch.exportTimeoutMillis = timeout;
  const traces = tracesExportersOf(env.OTEL_TRACES_EXPORTER);
  return {
    disabled: isTrueText(v),
    serviceName: env.OTEL_SERVICE_NAME || undefined,
    tracesExporters: traces.exporters,
    tracesExportersMixed: traces.mixed,
    samplerFromEnv: Boolean(env.OTEL_TRACES_SAMPLER),
    tracesProtocol: (env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL || env.OTEL_EXPORTER_OTLP_PROTOCOL || 'http/protobuf').trim(),
    batch,
  };
}

/** Role name and database name from a postgres URL. */
export function describePgUrl(url: string): { user: string; password: string; database: string; host: string; port: number } {
  const u = new URL(url);
  return {
    user: decodeURIComponent(u.username),
    password: decodeURIComponent(u.password),
    database: decodeURIComponent(u.pathname.replace(/^\//, '')),
    host: u.hostname,
    port: Number(u.port || 5432),
  };
}
