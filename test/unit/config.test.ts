import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { ConfigError, apiConfigProblems, parseConfig, poolMaxFor } from '../../src/platform/config/config.ts';
import { registeredQueues } from '../helpers/registered-workflows.ts';

const SECRET = 'a-development-secret-of-32-chars!';
/** The workflow queues the modules register, as the WORKER_QUEUES refusal lists them (a new workflow's joins by itself). */
const WORKFLOW_QUEUES = registeredQueues();

function configError(env: Record<string, string | undefined>): ConfigError {
  try {
    parseConfig(env);
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return e as ConfigError;
  }
  throw new Error('parseConfig accepted the environment');
}

/**
 * The API's own entry (src/server.ts, as the Procfile starts it) in an environment of `env` alone. Nothing to
 * connect to (port 1): a start past the configuration fails later and differently, or runs until the timeout.
 */
function startApi(env: Record<string, string>, entry = 'src/server.ts') {
  return spawnSync(process.execPath, [entry], {
    cwd: fileURLToPath(new URL('../..', import.meta.url)),
    env: { PATH: process.env.PATH ?? '', PORT: '0', DATABASE_URL: 'postgres://nobody@127.0.0.1:1/none', REDIS_URL: 'redis://127.0.0.1:1', OTEL_SDK_DISABLED: 'true', ...env },
    encoding: 'utf8',
    timeout: 45_000,
  });
}

describe('configuration', () => {
  it('works with nothing but a JWT secret: the defaults point at the local services', () => {
    const c = parseConfig({ JWT_SECRET: SECRET });
    expect(c).toMatchObject({
      NODE_ENV: 'development',
      PORT: 3000,
      DATABASE_URL: 'postgres://dealix_app:dealix_app@127.0.0.1:5432/dealix',
      MIGRATION_DATABASE_URL: 'postgres://dealix_owner:dealix_owner@127.0.0.1:5432/dealix',
      REDIS_URL: 'redis://127.0.0.1:6379',
      QUEUE_PREFIX: 'dealix',
      JWT_ALGORITHMS: ['HS256'],
      IDEMPOTENCY_TTL: 24 * 3600 * 1000,
      DATABASE_STATEMENT_TIMEOUT: 30_000,
      DATABASE_ANSWER_MARGIN: 10_000,
      DATABASE_ANSWER_PER_STATEMENT: false,
      DATABASE_PREPARED_STATEMENTS: true,
      DATABASE_GROUP_COMMIT_IN_FLIGHT: 2,
      LOG_LEVEL: 'info',
      BULL_BOARD_READ_ONLY: true,
      JWT_VERIFIED_TOKEN_TTL: 60_000,
      JWT_JWKS_CACHE_MAX_AGE: 600_000,
      JWT_JWKS_MAX_STALE: 86_400_000,
    });
    expect(c.DATABASE_ADMIN_URL).toBeUndefined();
  });

  it('refuses at start an approval SLA (APPROVAL_SLA_B / APPROVAL_SLA_C) under 1s, not whole seconds, or over 365d, naming it', () => {
    // 0 gave every request a 1 s deadline without a word; 300000000d a deadline no Date can write (RangeError at every class C run).
    for (const name of ['APPROVAL_SLA_B', 'APPROVAL_SLA_C']) {
      for (const bad of ['0', '500ms', '1500ms', '366d', '300000000d']) {
        expect(() => parseConfig({ JWT_SECRET: SECRET, [name]: bad }), `${name}=${bad}`).toThrow(new RegExp(`${name}.*whole number of seconds between 1s and 365d`));
      }
      for (const [good, ms] of [['1s', 1_000], ['365d', 365 * 86_400_000], ['90m', 5_400_000]] as const) {
        expect(parseConfig({ JWT_SECRET: SECRET, [name]: good })[name as 'APPROVAL_SLA_B'], `${name}=${good}`).toBe(ms);
      }
    }
  });

  it('JWT_MAX_TOKEN_LIFETIME: 24h by default, 0 (no limit) or 1m to 366d, anything else refused at start naming it', () => {
    expect(parseConfig({ JWT_SECRET: SECRET }).JWT_MAX_TOKEN_LIFETIME).toBe(86_400_000);
    expect(parseConfig({ JWT_SECRET: SECRET, JWT_MAX_TOKEN_LIFETIME: '0' }).JWT_MAX_TOKEN_LIFETIME).toBe(0);
    expect(parseConfig({ JWT_SECRET: SECRET, JWT_MAX_TOKEN_LIFETIME: '1h' }).JWT_MAX_TOKEN_LIFETIME).toBe(3_600_000);
    for (const bad of ['30s', '367d', 'soon']) expect(() => parseConfig({ JWT_SECRET: SECRET, JWT_MAX_TOKEN_LIFETIME: bad }), bad).toThrow(/JWT_MAX_TOKEN_LIFETIME/);
  });

  it('parses durations, numbers and lists from strings', () => {
    const c = parseConfig({ JWT_SECRET: SECRET, PORT: '8080', WORKER_LOCK_DURATION: '750ms', APPROVAL_SLA_B: '2h', JWT_ALGORITHMS: 'HS256, RS256' });
    expect([c.PORT, c.WORKER_LOCK_DURATION, c.APPROVAL_SLA_B, c.JWT_ALGORITHMS]).toEqual([8080, 750, 7_200_000, ['HS256', 'RS256']]);
  });

  it('verifies through a JWKS with RS256/ES256 by default when JWT_JWKS_URL is set', () => {
    expect(parseConfig({ JWT_JWKS_URL: 'https://issuer.example/jwks.json' }).JWT_ALGORITHMS).toEqual(['RS256', 'ES256']);
  });

  it('takes WEBHOOK_DNS_SERVERS as the resolver takes them (ip, ip:port, [ipv6]:port) and refuses anything else at start; unset: none (the system\'s)', () => {
    expect(parseConfig({ JWT_SECRET: SECRET }).WEBHOOK_DNS_SERVERS).toEqual([]);
    expect(parseConfig({ JWT_SECRET: SECRET, WEBHOOK_DNS_SERVERS: '10.0.0.2, 127.0.0.1:5353,[::1]:53' }).WEBHOOK_DNS_SERVERS).toEqual(['10.0.0.2', '127.0.0.1:5353', '[::1]:53']);
    for (const bad of ['dns.example.com', '127.0.0.1:port', '300.1.1.1']) expect(() => parseConfig({ JWT_SECRET: SECRET, WEBHOOK_DNS_SERVERS: bad }), bad).toThrow(/WEBHOOK_DNS_SERVERS/);
  });

  it('treats empty strings as unset', () => {
    expect(parseConfig({ JWT_SECRET: SECRET, PORT: '', LOG_LEVEL: '' })).toMatchObject({ PORT: 3000, LOG_LEVEL: 'info' });
  });

  it('names every bad variable at once', () => {
    const err = configError({
      JWT_SECRET: 'short',
      PORT: 'eighty',
      DATABASE_URL: 'mysql://app@localhost/dealix',
      QUEUE_PREFIX: 'has:colon',
      LOG_LEVEL: 'loud',
      WORKER_LOCK_DURATION: 'soon',
      JWT_ALGORITHMS: 'none',
    });
    const named = err.problems.map((p) => p.split(':')[0]);
    expect(named).toEqual(expect.arrayContaining(['JWT_SECRET', 'PORT', 'DATABASE_URL', 'QUEUE_PREFIX', 'LOG_LEVEL', 'WORKER_LOCK_DURATION']));
    expect(named.some((n) => n?.startsWith('JWT_ALGORITHMS'))).toBe(true);
    for (const v of ['JWT_SECRET', 'PORT', 'DATABASE_URL', 'QUEUE_PREFIX', 'LOG_LEVEL', 'WORKER_LOCK_DURATION', 'JWT_ALGORITHMS']) expect(err.message).toContain(v);
  });

  it('names the missing key material when neither JWT_SECRET nor JWT_JWKS_URL is set', () => {
    expect(configError({}).problems).toEqual([expect.stringMatching(/^JWT_SECRET: set JWT_SECRET .* or JWT_JWKS_URL/)]);
  });

  // The allow-list is checked against the key source the verifier uses (jwt.ts): a JWKS holds public keys
  // (RS256, ES256, PS256, EdDSA), never a shared secret, and wins over JWT_SECRET; a secret verifies HS256
  // only. A list of none of them used to start and then answer every token 401.
  it('refuses a JWT_ALGORITHMS list none of whose algorithms the key source can verify, naming the list and the key source', () => {
    const JWKS = 'https://issuer.example/jwks.json';
    for (const algs of ['RS256', 'ES256', 'PS256', 'EdDSA', 'RS256,ES256']) {
      expect(configError({ JWT_SECRET: SECRET, JWT_ALGORITHMS: algs }).problems, algs).toEqual([expect.stringMatching(/^JWT_ALGORITHMS: .*JWT_SECRET.*HS256/)]);
    }
    expect(configError({ JWT_JWKS_URL: JWKS, JWT_ALGORITHMS: 'HS256' }).problems).toEqual([expect.stringMatching(/^JWT_ALGORITHMS: .*JWT_JWKS_URL/)]);
    // Both set: the JWKS wins, so HS256 alone can verify nothing there either.
    expect(configError({ JWT_JWKS_URL: JWKS, JWT_SECRET: SECRET, JWT_ALGORITHMS: 'HS256' }).problems).toEqual([expect.stringMatching(/^JWT_ALGORITHMS: .*JWT_JWKS_URL.*wins over JWT_SECRET/)]);
    // A list with at least one algorithm its key source verifies is kept (the others verify nothing: jwt.test.ts).
    expect(parseConfig({ JWT_SECRET: SECRET, JWT_ALGORITHMS: 'HS256,RS256' }).JWT_ALGORITHMS).toEqual(['HS256', 'RS256']);
    expect(parseConfig({ JWT_JWKS_URL: JWKS, JWT_ALGORITHMS: 'PS256,HS256' }).JWT_ALGORITHMS).toEqual(['PS256', 'HS256']);
    expect(parseConfig({ JWT_JWKS_URL: JWKS, JWT_SECRET: SECRET, JWT_ALGORITHMS: 'EdDSA' }).JWT_ALGORITHMS).toEqual(['EdDSA']);
    // Names that are no algorithm (or not in the exact case jose uses) are refused as before, each named.
    for (const bad of ['none', 'rs256', 'HS512', 'RS256;ES256']) expect(configError({ JWT_SECRET: SECRET, JWT_ALGORITHMS: bad }).problems.join('\n'), bad).toMatch(/^JWT_ALGORITHMS\.0: /);
  });

  it('refuses an idempotency TTL shorter than the lease: the key would be forgotten while its request holds it', () => {
    expect(configError({ JWT_SECRET: SECRET, IDEMPOTENCY_TTL: '59s', IDEMPOTENCY_LEASE: '60s' }).problems).toEqual([expect.stringMatching(/^IDEMPOTENCY_TTL: must be at least IDEMPOTENCY_LEASE/)]);
    expect(parseConfig({ JWT_SECRET: SECRET, IDEMPOTENCY_TTL: '60s', IDEMPOTENCY_LEASE: '60s' }).IDEMPOTENCY_TTL).toBe(60_000);
  });

  // 0, or next to it, made each of these do something no one means: a duplicate request taking over an
  // idempotency key at once, a sweeper (and the limits reseed) firing back to back, BullMQ renewing a lock
  // it holds for no time or looking for stalled jobs in a tight loop. Refused at start, each named.
  it.each([
    ['IDEMPOTENCY_LEASE', '1s', ['0', '0s', '500ms', '999ms'], /^IDEMPOTENCY_LEASE: must be at least 1s, not \d+ ms: a retry of the request would take its key over while it still runs/],
    ['SWEEPER_INTERVAL', '1s', ['0', '10ms', '999ms'], /^SWEEPER_INTERVAL: must be at least 1s, not \d+ ms: the sweeper's cross-tenant reads would run back to back/],
    ['WORKER_LOCK_DURATION', '100ms', ['0', '1ms', '99ms'], /^WORKER_LOCK_DURATION: must be at least 100ms, not \d+ ms: every job's lock would lapse/],
    ['WORKER_STALLED_INTERVAL', '100ms', ['0', '1ms', '99ms'], /^WORKER_STALLED_INTERVAL: must be at least 100ms, not \d+ ms: BullMQ would look for stalled jobs/],
  ] as const)('refuses %s below %s at start-up, naming it and why', (name, least, bad, message) => {
    for (const value of bad) expect(configError({ JWT_SECRET: SECRET, [name]: value }).problems, value).toEqual([expect.stringMatching(message)]);
    expect(parseConfig({ JWT_SECRET: SECRET, [name]: least })[name]).toBe(name.startsWith('WORKER_') ? 100 : 1000);
  });

  it('names every nonsensical lower bound at once, with the other problems', () => {
    const problems = configError({ JWT_SECRET: SECRET, IDEMPOTENCY_LEASE: '0', SWEEPER_INTERVAL: '0', WORKER_LOCK_DURATION: '0', WORKER_STALLED_INTERVAL: '0', PORT: 'eighty' }).problems;
    expect(problems.map((p) => p.split(':')[0]).sort()).toEqual(['IDEMPOTENCY_LEASE', 'PORT', 'SWEEPER_INTERVAL', 'WORKER_LOCK_DURATION', 'WORKER_STALLED_INTERVAL']);
  });

  it('stops the API at start-up, exit code 1, when IDEMPOTENCY_LEASE is 0', () => {
    const r = startApi({ JWT_SECRET: SECRET, IDEMPOTENCY_LEASE: '0' });
    expect(r.status, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/^invalid configuration:\n {2}- IDEMPOTENCY_LEASE: must be at least 1s/);
  });

  it('keeps runs forever unless RUN_RETENTION is set, and refuses a retention shorter than IDEMPOTENCY_TTL (a replay would name a deleted run)', () => {
    expect(parseConfig({ JWT_SECRET: SECRET }).RUN_RETENTION).toBe(0);
    expect(parseConfig({ JWT_SECRET: SECRET, RUN_RETENTION: '0' }).RUN_RETENTION).toBe(0);
    expect(parseConfig({ JWT_SECRET: SECRET, RUN_RETENTION: '30d' }).RUN_RETENTION).toBe(30 * 86_400_000);
    expect(configError({ JWT_SECRET: SECRET, RUN_RETENTION: '23h' }).problems).toEqual([expect.stringMatching(/^RUN_RETENTION: must be 0 \(keep runs forever\) or at least IDEMPOTENCY_TTL/)]);
    expect(parseConfig({ JWT_SECRET: SECRET, RUN_RETENTION: '24h', IDEMPOTENCY_TTL: '2h' }).RUN_RETENTION).toBe(86_400_000);
    // Under the database's floor (ADR 0011, amendment "A floor under retention"), however short IDEMPOTENCY_TTL.
    expect(configError({ JWT_SECRET: SECRET, RUN_RETENTION: '2h', IDEMPOTENCY_TTL: '2h' }).problems).toEqual([expect.stringMatching(/^RUN_RETENTION: must be 0 \(keep runs forever\) or at least 24h/)]);
    // Under both bounds, the one message names the larger: naming IDEMPOTENCY_TTL (2h) sent the operator to
    // 2h, only for the next start to refuse it again for the floor.
    expect(configError({ JWT_SECRET: SECRET, RUN_RETENTION: '1h', IDEMPOTENCY_TTL: '2h' }).problems).toEqual([expect.stringMatching(/^RUN_RETENTION: must be 0 \(keep runs forever\) or at least 24h/)]);
    expect(configError({ JWT_SECRET: SECRET, RUN_RETENTION: '12h', IDEMPOTENCY_TTL: '48h' }).problems).toEqual([expect.stringMatching(/^RUN_RETENTION: must be 0 \(keep runs forever\) or at least IDEMPOTENCY_TTL \(172800000 ms\)/)]);
    expect(configError({ JWT_SECRET: SECRET, RUN_RETENTION: 'a month' }).problems[0]).toMatch(/^RUN_RETENTION: not a duration/);
    // Beyond PostgreSQL's timestamps (now() minus it is out of range): every pass would fail, every 10 minutes.
    expect(parseConfig({ JWT_SECRET: SECRET, RUN_RETENTION: '36500d' }).RUN_RETENTION).toBe(36_500 * 86_400_000);
    expect(configError({ JWT_SECRET: SECRET, RUN_RETENTION: '10000000d' }).problems).toEqual([expect.stringMatching(/^RUN_RETENTION: at most 36500d/)]);
  });

  it('refuses a RUN_RETENTION that is not 0 but rounds to 0 ms, which would turn retention off without a word', () => {
    for (const value of ['0.0001', '0.4ms', '0.0000001d', 0.0001]) {
      expect(configError({ JWT_SECRET: SECRET, RUN_RETENTION: value as string }).problems, String(value)).toEqual([expect.stringMatching(/^RUN_RETENTION: must be 0 \(keep runs forever\) or at least 1s/)]);
    }
    // Below a second but not 0 is refused too, whatever IDEMPOTENCY_TTL allows.
    // (An IDEMPOTENCY_LEASE that short is refused as well, on its own line.)
    expect(configError({ JWT_SECRET: SECRET, RUN_RETENTION: '500ms', IDEMPOTENCY_TTL: '100ms', IDEMPOTENCY_LEASE: '100ms' }).problems).toContainEqual(expect.stringMatching(/^RUN_RETENTION: must be 0 \(keep runs forever\) or at least 1s/));
    for (const zero of ['0', '0s', '0.0d', '00ms', 0]) expect(parseConfig({ JWT_SECRET: SECRET, RUN_RETENTION: zero as string }).RUN_RETENTION, String(zero)).toBe(0);
    expect(parseConfig({ JWT_SECRET: SECRET, RUN_RETENTION: '24h', IDEMPOTENCY_TTL: '1s', IDEMPOTENCY_LEASE: '1s' }).RUN_RETENTION).toBe(86_400_000);
  });

  // PostgreSQL's statement_timeout and Node's requestTimeout take whole milliseconds, and 0 is "no timeout": a value that is
  // not 0 yet rounds to 0 ms (0.0001 = 0.1 ms) turned the bound off without a word. 0 itself stays the explicit off.
  it.each([
    ['DATABASE_STATEMENT_TIMEOUT', 'no statement timeout'],
    ['API_REQUEST_TIMEOUT', 'no request timeout'],
  ] as const)('refuses a %s that is not 0 but under 1 ms (it would mean %s); 0 is kept as the explicit off', (name, off) => {
    for (const value of ['0.0001', '0.4ms', '0.000000001d']) {
      expect(configError({ JWT_SECRET: SECRET, [name]: value }).problems, value).toEqual([new RegExp(`^${name}: must be 0 \\(${off}\\) or at least 1ms, not "${value}" \\(0 ms\\)`)].map((r) => expect.stringMatching(r)));
    }
    for (const zero of ['0', '0s', '00ms', 0]) expect(parseConfig({ JWT_SECRET: SECRET, [name]: zero as string })[name], String(zero)).toBe(0);
    for (const [v, ms] of [['1ms', 1], ['0.5ms', 1], ['0.001', 1], ['250ms', 250]] as const) expect(parseConfig({ JWT_SECRET: SECRET, [name]: v })[name], v).toBe(ms);
  });

  it.each([
    ['WORKER_MAX_ACTIVE_RUNS_PER_TENANT', 0, 100_000, 'ADR 0012'],
    ['WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT', 4, 1_000, 'ADR 0013'],
  ] as const)('%s: %i unless set, 0 (off) to %i, anything else refused in one line naming it (%s)', (name, byDefault, max, _adr) => {
    expect(parseConfig({ JWT_SECRET: SECRET })[name]).toBe(byDefault);
    for (const n of [0, 1, 25, max]) expect(parseConfig({ JWT_SECRET: SECRET, [name]: String(n) })[name]).toBe(n);
    for (const bad of ['-1', '2.5', 'ten', String(max + 1), '1e9']) {
      expect(configError({ JWT_SECRET: SECRET, [name]: bad }).problems, bad).toEqual([expect.stringMatching(new RegExp(`^${name}: `))]);
    }
  });

  it('WEBHOOK_DISABLE_AFTER: 5 days unless set; 0 or off never disables; under a second (not 0) or over a year refused, naming it', () => {
    expect(parseConfig({ JWT_SECRET: SECRET }).WEBHOOK_DISABLE_AFTER).toBe(5 * 86_400_000);
    for (const [text, ms] of [['off', 0], ['0', 0], ['0s', 0], ['1s', 1000], ['36h', 36 * 3_600_000], ['365d', 365 * 86_400_000]] as const) {
      expect(parseConfig({ JWT_SECRET: SECRET, WEBHOOK_DISABLE_AFTER: text }).WEBHOOK_DISABLE_AFTER, text).toBe(ms);
    }
    for (const bad of ['500ms', '0.0001', '366d', 'never', '-1d', 'OFF']) {
      expect(configError({ JWT_SECRET: SECRET, WEBHOOK_DISABLE_AFTER: bad }).problems, bad).toEqual([expect.stringMatching(/^WEBHOOK_DISABLE_AFTER: /)]);
    }
  });

  it('READINESS_ACCEPT_UNKNOWN: none unless set; only the rows whose value can be unknown, each other id named (a typo accepts nothing silently)', () => {
    const none = parseConfig({ JWT_SECRET: SECRET });
    expect([none.READINESS_ACCEPT_UNKNOWN, none.READINESS_ACCEPT_NOTE]).toEqual([[], undefined]);
    const c = parseConfig({ JWT_SECRET: SECRET, READINESS_ACCEPT_UNKNOWN: ' redis-timeout, redis-eviction,redis-persistence ', READINESS_ACCEPT_NOTE: ' checked in the parameter group ' });
    expect(c).toMatchObject({ READINESS_ACCEPT_UNKNOWN: ['redis-timeout', 'redis-eviction', 'redis-persistence'], READINESS_ACCEPT_NOTE: 'checked in the parameter group' });
    expect(configError({ JWT_SECRET: SECRET, READINESS_ACCEPT_UNKNOWN: 'redis-timeout,redis-timout,redis' }).problems).toEqual([
      'READINESS_ACCEPT_UNKNOWN.1: "redis-timout" is no readiness row whose value can be unknown (redis-eviction, redis-persistence, redis-timeout)',
      'READINESS_ACCEPT_UNKNOWN.2: "redis" is no readiness row whose value can be unknown (redis-eviction, redis-persistence, redis-timeout)',
    ]);
  });

  it('READINESS_ACCEPT_NOTE: required once READINESS_ACCEPT_UNKNOWN lists a row — an acceptance without its audit trail is refused', () => {
    expect(configError({ JWT_SECRET: SECRET, READINESS_ACCEPT_UNKNOWN: 'redis-timeout' }).problems).toEqual([
      "READINESS_ACCEPT_NOTE: required when READINESS_ACCEPT_UNKNOWN lists rows: who verified which values, where and when (the acceptance's audit trail, shown in each ACCEPTED row)",
    ]);
    expect(parseConfig({ JWT_SECRET: SECRET, READINESS_ACCEPT_NOTE: 'kept for later' }).READINESS_ACCEPT_UNKNOWN).toEqual([]);
  });

  it('READINESS_ACCEPT_NOTE: one line of text — a newline or other control character would forge rows of the printed matrix', () => {
    for (const note of ['checked\nFAIL ✗    redis-eviction  forged', 'checked\r\nREADY: 20 of 20 components PASS', '\u001b[32mchecked', 'checked\u0085']) {
      expect(configError({ JWT_SECRET: SECRET, READINESS_ACCEPT_NOTE: note }).problems, JSON.stringify(note)).toEqual(['READINESS_ACCEPT_NOTE: must be one line without control characters']);
    }
    expect(parseConfig({ JWT_SECRET: SECRET, READINESS_ACCEPT_NOTE: 'ElastiCache dealix-prod: timeout 0 — ops, 2026-12-01 (ÄÖ, 検証)' }).READINESS_ACCEPT_NOTE).toBe('ElastiCache dealix-prod: timeout 0 — ops, 2026-12-01 (ÄÖ, 検証)');
  });

  it('refuses a shared secret in production, and an operator user without a password', () => {
    expect(configError({ NODE_ENV: 'production', JWT_SECRET: SECRET }).problems[0]).toMatch(/^JWT_JWKS_URL:/);
    expect(configError({ JWT_SECRET: SECRET, OPERATOR_USER: 'ops' }).problems[0]).toMatch(/^OPERATOR_PASSWORD:/);
  });

  // A security review signed its own tokens (any tenant, any role) with keys it served from http://127.0.0.1: over
  // plain http, whoever sits on the path (or the host) hands the API the keys it trusts. Outside production a local
  // JWKS over http stays (the tests' own identity providers); no scheme but http(s) anywhere.
  it('refuses a JWT_JWKS_URL that is not https in production, loopback included, saying what to set; http stays allowed outside production', () => {
    const https = 'https://idp.example/.well-known/jwks.json';
    for (const url of ['http://127.0.0.1:8080/jwks.json', 'http://localhost/jwks.json', 'http://[::1]/jwks.json', 'HTTP://idp.example/jwks.json', 'http://idp.example:443/jwks.json']) {
      expect(configError({ NODE_ENV: 'production', JWT_JWKS_URL: url }).problems, url).toEqual([
        expect.stringMatching(/^JWT_JWKS_URL: must be https in production .*set JWT_JWKS_URL to the identity provider's https:\/\/ key set URL/),
      ]);
    }
    expect(parseConfig({ NODE_ENV: 'production', JWT_JWKS_URL: https }).JWT_JWKS_URL).toBe(https);
    for (const env of ['development', 'test']) expect(parseConfig({ NODE_ENV: env, JWT_JWKS_URL: 'http://127.0.0.1:8080/jwks.json' }).JWT_JWKS_URL).toBe('http://127.0.0.1:8080/jwks.json');
    for (const url of ['file:///etc/jwks.json', 'ftp://idp.example/jwks.json', 'data:application/json,{}']) {
      expect(configError({ JWT_JWKS_URL: url }).problems, url).toEqual([expect.stringMatching(/^JWT_JWKS_URL: must be an https:\/\/ URL \(http:\/\/ outside production\)/)]);
    }
  });

  // Re-review: a JWKS URL with user info passed start-up and readiness (which printed the password) while fetch refuses
  // to send it, so every token was answered 503. The message does not repeat the URL (stderr would carry the password).
  it('refuses a JWT_JWKS_URL carrying user info, in any environment, without echoing it', () => {
    for (const url of ['https://ops:s3cret-pw@idp.example/jwks.json', 'https://ops@idp.example/jwks.json', 'http://:s3cret-pw@127.0.0.1:8080/jwks.json']) {
      for (const env of ['production', 'development']) {
        const problems = configError({ NODE_ENV: env, JWT_JWKS_URL: url }).problems.filter((p) => p.startsWith('JWT_JWKS_URL'));
        expect(problems, `${env} ${url}`).toContainEqual(expect.stringMatching(/^JWT_JWKS_URL: must not carry user info/));
        for (const p of problems) expect(p).not.toContain('s3cret-pw');
      }
    }
  });

  it('stops the API at start-up in production, exit code 1, naming JWT_JWKS_URL, when the key set is fetched over plain http', () => {
    const r = startApi({ NODE_ENV: 'production', JWT_JWKS_URL: 'http://127.0.0.1:1/jwks.json' });
    expect(r.status, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/^invalid configuration:\n {2}- JWT_JWKS_URL: must be https in production/);
    expect(r.stdout).toBe('');
  });

  it('remembers a verified token for 60 s at most (ADR 0006)', () => {
    expect(parseConfig({ JWT_SECRET: SECRET, JWT_VERIFIED_TOKEN_TTL: '0s' }).JWT_VERIFIED_TOKEN_TTL).toBe(0);
    expect(configError({ JWT_SECRET: SECRET, JWT_VERIFIED_TOKEN_TTL: '61s' }).problems).toEqual(['JWT_VERIFIED_TOKEN_TTL: at most 60s (ADR 0006)']);
    // The JWKS cache bounds how soon a removed key is refused: an hour at most, and at least a second.
    for (const age of ['2h', '500ms']) expect(configError({ JWT_SECRET: SECRET, JWT_JWKS_CACHE_MAX_AGE: age }).problems).toEqual([expect.stringMatching(/^JWT_JWKS_CACHE_MAX_AGE: between 1s/)]);
  });

  it('is frozen, lists included', () => {
    const c = parseConfig({ JWT_SECRET: SECRET });
    expect(Object.isFrozen(c)).toBe(true);
    expect(() => ((c as { PORT: number }).PORT = 1)).toThrow(TypeError);
    expect(Object.isFrozen(c.JWT_ALGORITHMS)).toBe(true);
    expect(() => (c.JWT_ALGORITHMS as string[]).push('none')).toThrow(TypeError);
  });

  it('stops start-up with exit code 1 and a message naming the variable (loadConfig)', () => {
    const root = fileURLToPath(new URL('../..', import.meta.url));
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', `import { loadConfig } from './src/platform/config/config.ts'; loadConfig(); console.log('started');`], {
      cwd: root,
      env: { PATH: process.env.PATH ?? '', JWT_SECRET: SECRET, PORT: 'eighty' },
      encoding: 'utf8',
    });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/PORT/);
    expect(r.stdout).not.toMatch(/started/);
  });

  // It used to start and listen, then answer every token 401.
  it('stops the API at start-up, exit code 1, naming JWT_ALGORITHMS and the key source, when no listed algorithm can be verified', () => {
    const r = startApi({ JWT_SECRET: SECRET, JWT_ALGORITHMS: 'RS256' });
    expect(r.status, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/^invalid configuration:\n {2}- JWT_ALGORITHMS: RS256 lists no algorithm the key source verifies: tokens are checked against JWT_SECRET \(no JWT_JWKS_URL\)/);
    expect(r.stdout).toBe('');
  });

  // The share (ADR 0012, amendment) bounds a tenant's requests doing database work at once in an API process: above
  // the API's pool, one tenant may hold every connection, as with the share off, yet it looks set. The API checks it,
  // not the schema: a worker reads the same variables with a pool of its own, which may be smaller.
  it("refuses, for the API, a tenant's database share larger than the API's pool (DATABASE_POOL_MAX, 10 unset), naming both", () => {
    expect(apiConfigProblems(parseConfig({ JWT_SECRET: SECRET, API_MAX_DB_CONNECTIONS_PER_TENANT: '11' }))).toEqual([
      expect.stringMatching(/^API_MAX_DB_CONNECTIONS_PER_TENANT: 11 is more than the API's pool of 10 connections \(DATABASE_POOL_MAX unset\)/),
    ]);
    expect(apiConfigProblems(parseConfig({ JWT_SECRET: SECRET, DATABASE_POOL_MAX: '4', API_MAX_DB_CONNECTIONS_PER_TENANT: '5' }))).toEqual([
      expect.stringMatching(/^API_MAX_DB_CONNECTIONS_PER_TENANT: 5 is more than the API's pool of 4 connections \(DATABASE_POOL_MAX=4\)/),
    ]);
    // Unset (half the pool), 0 (off), and up to the whole pool are kept; a worker's larger default pool does not count.
    for (const env of [{}, { API_MAX_DB_CONNECTIONS_PER_TENANT: '0' }, { API_MAX_DB_CONNECTIONS_PER_TENANT: '10' }, { DATABASE_POOL_MAX: '40', API_MAX_DB_CONNECTIONS_PER_TENANT: '40' }, { DATABASE_POOL_MAX: '1' }]) {
      expect(apiConfigProblems(parseConfig({ JWT_SECRET: SECRET, WORKER_CONCURRENCY: '50', ...env })), JSON.stringify(env)).toEqual([]);
    }
    // Parsing alone does not refuse it: a worker's DATABASE_POOL_MAX may be below the API's share.
    expect(parseConfig({ JWT_SECRET: SECRET, DATABASE_POOL_MAX: '3', API_MAX_DB_CONNECTIONS_PER_TENANT: '5' }).API_MAX_DB_CONNECTIONS_PER_TENANT).toBe(5);
  });

  it('stops the API at start-up, exit code 1, when API_MAX_DB_CONNECTIONS_PER_TENANT is larger than its pool', () => {
    const r = startApi({ JWT_SECRET: SECRET, API_MAX_DB_CONNECTIONS_PER_TENANT: '20' });
    expect(r.status, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/^invalid configuration:\n {2}- API_MAX_DB_CONNECTIONS_PER_TENANT: 20 is more than the API's pool of 10 connections/);
    expect(r.stdout).toBe('');
  });

  // The tenant's share of the in-flight requests (API_MAX_INFLIGHT_PER_TENANT) is a part of API_MAX_INFLIGHT: at or above
  // it one tenant may take every place, and the others are shed with 503, as with the share off, while it reads as set.
  // 0 is each setting's explicit off: a share with the process cap off (API_MAX_INFLIGHT=0) still bounds each tenant.
  it("refuses, for the API, a tenant's in-flight share at or above API_MAX_INFLIGHT, unless either is 0 (off)", () => {
    expect(apiConfigProblems(parseConfig({ JWT_SECRET: SECRET, API_MAX_INFLIGHT: '16' }))).toEqual([
      expect.stringMatching(/^API_MAX_INFLIGHT_PER_TENANT: 16 is not below API_MAX_INFLIGHT \(16\): one tenant could take every in-flight place/),
    ]);
    expect(apiConfigProblems(parseConfig({ JWT_SECRET: SECRET, API_MAX_INFLIGHT: '8', API_MAX_INFLIGHT_PER_TENANT: '100' }))).toEqual([
      expect.stringMatching(/^API_MAX_INFLIGHT_PER_TENANT: 100 is not below API_MAX_INFLIGHT \(8\)/),
    ]);
    for (const env of [{}, { API_MAX_INFLIGHT: '17' }, { API_MAX_INFLIGHT_PER_TENANT: '0', API_MAX_INFLIGHT: '1' }, { API_MAX_INFLIGHT: '0', API_MAX_INFLIGHT_PER_TENANT: '500' }, { API_MAX_INFLIGHT: '0', API_MAX_INFLIGHT_PER_TENANT: '0' }]) {
      expect(apiConfigProblems(parseConfig({ JWT_SECRET: SECRET, ...env })), JSON.stringify(env)).toEqual([]);
    }
  });

  it('stops the API at start-up, exit code 1, naming both in-flight problems and the database share at once', () => {
    const r = startApi({ JWT_SECRET: SECRET, API_MAX_INFLIGHT: '4', API_MAX_DB_CONNECTIONS_PER_TENANT: '20' });
    expect(r.status, r.stderr).toBe(1);
    expect(r.stderr.split('\n').filter((l) => l.startsWith('  - ')).map((l) => l.replace(/:.*/, ''))).toEqual(['  - API_MAX_DB_CONNECTIONS_PER_TENANT', '  - API_MAX_INFLIGHT_PER_TENANT']);
    expect(r.stderr).toMatch(/\n {2}- API_MAX_INFLIGHT_PER_TENANT: 16 is not below API_MAX_INFLIGHT \(4\)/);
    expect(r.stdout).toBe('');
  });

  // The schema takes any address-like text (its characters); Express compiles the list only when the app is built,
  // after the connections were opened, and threw a TypeError there: a stack trace, not the setting named.
  it('stops the API at start-up, exit code 1, naming TRUST_PROXY, when the list holds what is no address, subnet or name', () => {
    const r = startApi({ JWT_SECRET: SECRET, TRUST_PROXY: 'loopbak, 10.0.0.0/33' });
    expect(r.status, r.stderr).toBe(1);
    expect(r.stderr).toBe('invalid configuration:\n  - TRUST_PROXY: "loopbak, 10.0.0.0/33" is not true, false, a hop count, or addresses/subnets/loopback|linklocal|uniquelocal, comma-separated (invalid IP address: loopbak)\n');
    expect(r.stdout).toBe('');
  });

  // The settings checked once the modules are known (TRUST_PROXY, the share, WORKER_QUEUES, WORKFLOW_VERSIONS_RETIRED)
  // are reported together, as the schema's are: each used to stop the start alone, the next one found only
  // at the next start (three restarts to find three typos).
  it('stops the API at start-up naming every setting checked against the modules at once, not the first alone', () => {
    const r = startApi({ JWT_SECRET: SECRET, TRUST_PROXY: 'loopbak', API_MAX_DB_CONNECTIONS_PER_TENANT: '20', WORKFLOW_VERSIONS_RETIRED: 'golden-path-v1' });
    expect(r.status, r.stderr).toBe(1);
    expect(r.stderr.split('\n').filter((l) => l.startsWith('  - ')).map((l) => l.replace(/:.*/, ''))).toEqual(['  - TRUST_PROXY', '  - API_MAX_DB_CONNECTIONS_PER_TENANT', '  - WORKFLOW_VERSIONS_RETIRED']);
    expect(r.stdout).toBe('');
  });

  it('stops a worker at start-up naming both WORKER_QUEUES and WORKFLOW_VERSIONS_RETIRED when both are wrong', () => {
    const r = startApi({ JWT_SECRET: SECRET, WORKER_QUEUES: 'golden-path,partner-offbording', WORKFLOW_VERSIONS_RETIRED: 'golden-path-v1' }, 'workers/golden-path.worker.ts');
    expect(r.status, r.stderr).toBe(1);
    expect(r.stderr).toBe(
      `invalid configuration:\n  - WORKER_QUEUES: partner-offbording is no workflow queue; there are ${WORKFLOW_QUEUES}\n  - WORKFLOW_VERSIONS_RETIRED: "golden-path-v1" is not name@vN (e.g. golden-path@v1)\n`,
    );
    expect(r.stdout).toBe('');
  });

  // A worker's SLA timers (WORKER_TIMER_CONCURRENCY, ADR 0015) each hold a connection for their
  // transaction: left out of the default, a timer that came due waited for one behind the run jobs.
  it("pools, when DATABASE_POOL_MAX is unset, a worker's run jobs on every queue it serves, its timers, and two; the API 10; a set DATABASE_POOL_MAX wins", () => {
    const defaults = parseConfig({ JWT_SECRET: SECRET });
    // WORKER_CONCURRENCY 16 by default since session 42 (8 before): 38 connections with both workflow
    // queues, 22 with one — the numbers docs/runbook.md's connection budget is written with.
    expect(defaults.WORKER_CONCURRENCY).toBe(16);
    expect(poolMaxFor(defaults, 'worker', 2)).toBe(38);
    expect(poolMaxFor(defaults, 'worker', 1)).toBe(22);
    expect(poolMaxFor(parseConfig({ JWT_SECRET: SECRET, WORKER_CONCURRENCY: '3', WORKER_TIMER_CONCURRENCY: '7' }), 'worker', 2)).toBe(3 * 2 + 7 + 2);
    expect(poolMaxFor(defaults, 'api', 0)).toBe(10);
    expect(poolMaxFor(defaults, 'tool', 0)).toBe(10);
    const explicit = parseConfig({ JWT_SECRET: SECRET, DATABASE_POOL_MAX: '5', WORKER_TIMER_CONCURRENCY: '20' });
    expect(poolMaxFor(explicit, 'worker', 2)).toBe(5);
    expect(poolMaxFor(explicit, 'api', 0)).toBe(5);
  });
});
