import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { spawnApi, type ApiProcess } from '../helpers/api-process.ts';
import { waitFor } from '../helpers/poll.ts';
import { runTokenCli } from '../helpers/token-cli.ts';
import { signDevToken } from '../../src/platform/tenancy/jwt.ts';
import { declareTokenAge, PRUNE_LOCK_TIMEOUT_MS, pruneRevocations, revokeTokens, TOKEN_AGE_SEEN_WINDOW, TokenAgeDeclarationsFullError, tokenMaxAgeSeconds } from '../../src/platform/tenancy/token-revocations.ts';
import { TOKEN_AGE_DECLARATIONS_MAX } from '../../src/platform/tenancy/token-age-limit.entity.ts';

/**
 * `npm run token -- prune-revocations` judges not-before revocations by the token age the API processes
 * declare (token_age_limits; ADR 0018, amendment "The prune reads the APIs' limits"), never by its own
 * environment alone: run with JWT_MAX_TOKEN_LIFETIME=1h beside an API enforcing 48h, it deleted a
 * not-before that still refused a 47-hour-old token there, and the revoked token verified again. Every
 * age is the database's clock's; a stale declaration is a row written as the owner with an old seen_at.
 * The stack's in-process API (24 h, the default) declares too; TOKEN_REVOCATION_RECONCILE is 1 h, so it
 * does not declare again during the file (the last test deletes every declaration).
 */
const RUNS = '/api/v1/golden-path/runs';
const HOUR = 3_600_000;
const MARGIN_MS = 300_000; // REVOKED_ID_KEPT_AFTER_EXPIRY
let stack: TestStack;

beforeAll(async () => {
  stack = await startStack({ env: { TOKEN_REVOCATION_RECONCILE: '1h' } });
});
afterAll(async () => {
  await stack?.stop();
});

/** `npm run token -- …` itself (src/cli/token.ts), with the stack's settings. */
const tokenCli = (args: string[], env: Record<string, string> = {}) => runTokenCli(stack.env, args, env);

const dbNow = async () => ((await stack.db.admin(`select now() as now`)).rows[0] as { now: Date }).now.getTime();
/** A tenant-wide not-before `ageMs` old by the database's clock, stored as the CLI stores it (and announced). */
const notBefore = (tenant: string, at: number) => revokeTokens({ ownerUrl: stack.db.ownerUrl, redis: stack.redis, prefix: stack.prefix }, { tenantId: tenant, issuedBefore: new Date(at), revokedBy: 'test-operator' });
const left = async (tenant: string) =>
  (await stack.db.admin(`select round(extract(epoch from $2::timestamptz - not_before) / 3600)::int as hours from token_revocations where tenant_id = $1 order by 1`, [tenant, new Date(await dbNow())])).rows.map(
    (r: { hours: number }) => r.hours,
  );
const declared = async () =>
  (await stack.db.admin(`select instance, max_token_age_seconds::float8 as age from token_age_limits order by instance`)).rows as Array<{ instance: string; age: number }>;
const ageOf = (lifetime: string) => tokenMaxAgeSeconds({ maxTokenLifetimeMs: lifetime === '48h' ? 48 * HOUR : 24 * HOUR, clockToleranceMs: stack.config.JWT_CLOCK_TOLERANCE });

/** Runs `sql` as the application role (RLS and grants in force): its row count, or the SQLSTATE it failed with. */
async function asApp(sql: string): Promise<number | string> {
  const app = new pg.Client({ connectionString: stack.db.appUrl });
  await app.connect();
  try {
    return (await app.query(sql)).rowCount ?? 0;
  } catch (e) {
    return (e as { code?: string }).code ?? String(e);
  } finally {
    await app.end();
  }
}

describe('prune-revocations goes by the token age the API processes declare', () => {
  it('every API process declares the age it enforces before it checks a token; the application role can neither shorten one nor age it out of the window, nor insert one seen in the future', async () => {
    // The start waits 5 s at most for its first load (declaration included), then serves 503 until it is done: under load, poll.
    const [own] = await waitFor(async () => ((await declared()).length ? declared() : undefined), { timeoutMs: 30_000, what: "the stack's API's declaration" });
    expect((await declared()).map((d) => d.age)).toEqual([ageOf('24h')]);
    expect(await asApp(`update token_age_limits set max_token_age_seconds = 60`)).toBe('42501');
    expect(await asApp(`delete from token_age_limits`)).toBe('42501');
    // seen_at is the one column it updates, and the database's time is what is stored, whatever it writes.
    expect(await asApp(`update token_age_limits set seen_at = now() - interval '30 days'`)).toBe(1);
    const { rows } = await stack.db.admin(`select seen_at > now() - interval '1 minute' as fresh from token_age_limits where instance = $1`, [own!.instance]);
    expect(rows).toEqual([{ fresh: true }]);
    // Nor can it insert a row seen in the future: one would count for ever (never past the window, never removed).
    expect(await asApp(`insert into token_age_limits (instance, max_token_age_seconds, published_at, seen_at) values ('forged', 60, now(), now() + interval '100 years')`)).toBe(1);
    const forged = await stack.db.admin(`select seen_at <= now() as not_ahead from token_age_limits where instance = 'forged'`);
    await stack.db.owner(`delete from token_age_limits where instance = 'forged'`);
    expect(forged.rows).toEqual([{ not_ahead: true }]);
  });

  it('one row per declared age: a restart or a second process with the same settings adds none, and the application role cannot grow the table past TOKEN_AGE_DECLARATIONS_MAX rows', { timeout: 60_000 }, async () => {
    // Keyed by each start's instance id, every restart added a row, and the application role any number of them (pruned only 7 days on).
    const before = await declared();
    await declareTokenAge(stack.container.orm, { instance: 'restarted-api', maxAgeSeconds: ageOf('24h') });
    expect(await declared()).toEqual(before);
    // The previous release's declaration (during a roll) still runs, and lands on its age's row.
    const previousRelease = `insert into token_age_limits (instance, max_token_age_seconds, published_at, seen_at) values ('old-release-api', ${ageOf('24h')}, now(), now()) on conflict (instance) do update set seen_at = now()`;
    expect(await asApp(previousRelease)).toBe(0);
    expect(await declared()).toEqual(before);
    const fillers = (from: number, n: number) =>
      `insert into token_age_limits (instance, max_token_age_seconds, published_at, seen_at) select 'filler-' || (${from} + g), ${from} + g, now(), now() from generate_series(1, ${n}) g`;
    try {
      // Rows of one statement past the cap: the statement is refused whole.
      expect(await asApp(fillers(1_000_000, TOKEN_AGE_DECLARATIONS_MAX * 2))).toBe('54000');
      expect(await declared()).toEqual(before);
      expect(await asApp(fillers(1_000_000, TOKEN_AGE_DECLARATIONS_MAX - before.length))).toBe(TOKEN_AGE_DECLARATIONS_MAX - before.length);
      // At the cap: a new age is refused, one already there is still declared (every process's reconcile).
      expect(await asApp(fillers(2_000_000, 1))).toBe('54000');
      // An API process with a new age: its error (logged at every reconcile, every token answered 503) says which rows are safe to delete and how to see them.
      const refused = await declareTokenAge(stack.container.orm, { instance: 'new-age-api', maxAgeSeconds: ageOf('48h') }).then(() => undefined, (e: unknown) => e);
      expect(refused).toBeInstanceOf(TokenAgeDeclarationsFullError);
      expect((refused as Error).message).toMatch(new RegExp(`^this API process cannot declare the token age it enforces \\(max_token_age_seconds ${ageOf('48h')}\\): token_age_limits holds ${TOKEN_AGE_DECLARATIONS_MAX} other ages`));
      expect((refused as Error).message).toContain(`Rows not seen within ${TOKEN_AGE_SEEN_WINDOW} are safe to delete (the prune ignores them): as the owner (MIGRATION_DATABASE_URL), see them with select * from token_age_limits where seen_at <= now() - interval '${TOKEN_AGE_SEEN_WINDOW}' order by seen_at; npm run token -- prune-revocations deletes them`);
      await declareTokenAge(stack.container.orm, { instance: 'restarted-api', maxAgeSeconds: ageOf('24h') });
      expect((await declared()).length).toBe(TOKEN_AGE_DECLARATIONS_MAX);
    } finally {
      await stack.db.owner(`delete from token_age_limits where instance like 'filler-%'`);
    }
    expect(await declared()).toEqual(before);
  });

  it('a prune behind a transaction left open on token_age_limits gives up after its lock timeout, with a message saying how to find the holder; the declarations queued behind it go through', { timeout: 120_000 }, async () => {
    // Without a lock timeout the prune waited for ever, and every API process's declaration (a start, a reconcile) queued behind its request.
    const holder = new pg.Client({ connectionString: stack.db.adminUrl });
    await holder.connect();
    try {
      await holder.query('begin');
      await holder.query('lock table token_age_limits in row exclusive mode'); // as an insert left uncommitted holds it
      let prune: { code: number | null; out: string; err: string } | undefined;
      void tokenCli(['prune-revocations']).then((r) => (prune = r));
      await waitFor(
        async () => Number((await stack.db.admin(`select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock' and query ~ 'lock table token_age_limits'`)).rows[0].n) >= 1,
        { timeoutMs: 30_000, what: 'the prune waiting for the table' },
      );
      const declaring = declareTokenAge(stack.container.orm, { instance: 'queued-api', maxAgeSeconds: ageOf('24h') }).then(() => 'declared', (e: unknown) => e);
      const done = await waitFor(() => prune, { timeoutMs: 60_000, what: `the prune giving up (${PRUNE_LOCK_TIMEOUT_MS} ms)` });
      expect(done.code, done.out).toBe(1);
      expect(done.err).toMatch(new RegExp(`^token prune-revocations failed: gave up after ${PRUNE_LOCK_TIMEOUT_MS} ms waiting for a lock on token_age_limits .*deleted nothing.*pg_stat_activity`));
      // The holder still holds its lock: the declaration only waited for the prune's request.
      expect(await declaring).toBe('declared');
    } finally {
      await holder.query('rollback').catch(() => {});
      await holder.end();
    }
  });

  it('a declaration not seen within the window (7 days) is ignored, and removed', async () => {
    // A process gone for 8 days that enforced no limit: it no longer keeps every not-before.
    await stack.db.owner(`insert into token_age_limits (instance, max_token_age_seconds, published_at, seen_at) values ('gone-api', 0, now() - interval '30 days', now() - interval '8 days')`);
    const tenant = newTenant();
    const now = await dbNow();
    await notBefore(tenant, now - ageOf('24h') * 1000 - MARGIN_MS - HOUR); // past the 24 h the stack's API declares
    await notBefore(tenant, now - 23 * HOUR);
    const pruned = await tokenCli(['prune-revocations']);
    expect(pruned.code, pruned.err).toBe(0);
    expect(pruned.out).toMatch(/pruned 1 /);
    expect(await left(tenant)).toEqual([23]);
    expect((await declared()).map((d) => d.instance)).not.toContain('gone-api');
  });

  it('an API enforcing 48 h and a prune run with JWT_MAX_TOKEN_LIFETIME=1h: the not-before a 47-hour-old token still hits is kept, and the token stays refused', { timeout: 180_000 }, async () => {
    let long: ApiProcess | undefined;
    try {
      long = await spawnApi({ ...stack.env, JWT_MAX_TOKEN_LIFETIME: '48h' });
      await waitFor(async () => (await declared()).length === 2, { timeoutMs: 30_000, what: 'the 48 h API\'s declaration' });
      expect((await declared()).map((d) => d.age).sort((a, b) => a - b)).toEqual([ageOf('24h'), ageOf('48h')]);
      const tenant = newTenant();
      const now = await dbNow();
      await notBefore(tenant, now - 46 * HOUR);
      await notBefore(tenant, now - ageOf('48h') * 1000 - MARGIN_MS - HOUR); // no token it refuses verifies anywhere
      const old = await signDevToken(stack.config, { tenantId: tenant, sub: 'leaver', issuedAt: Math.floor(Date.now() / 1000) - 47 * 3600, ttlSeconds: 600 });
      const status = async () => (await fetch(`${long!.baseUrl}${RUNS}`, { headers: { authorization: `Bearer ${old}` } })).status;
      await waitFor(async () => (await status()) === 401, { timeoutMs: 30_000, what: 'the 47-hour-old token refused by the 48 h API' });
      const refused = await fetch(`${long.baseUrl}${RUNS}`, { headers: { authorization: `Bearer ${old}` } });
      expect(((await refused.json()) as { code: string }).code).toBe('token_revoked');

      const pruned = await tokenCli(['prune-revocations'], { JWT_MAX_TOKEN_LIFETIME: '1h' });
      expect(pruned.code, pruned.err).toBe(0);
      expect(pruned.out).toMatch(/pruned 1 /);
      expect(await left(tenant)).toEqual([46]);
      // A reload (as every reconcile makes) still holds the row: the token stays revoked.
      await long.stop();
      long = await spawnApi({ ...stack.env, JWT_MAX_TOKEN_LIFETIME: '48h' });
      // 503 until its first load (at most 5 s of its start waits for it; under load it may come later).
      const again = await waitFor(
        async () => {
          const r = await fetch(`${long!.baseUrl}${RUNS}`, { headers: { authorization: `Bearer ${old}` } });
          return r.status === 503 ? undefined : r;
        },
        { timeoutMs: 30_000, what: 'the restarted 48 h API\'s first load' },
      );
      expect(again.status).toBe(401);
      expect(((await again.json()) as { code: string }).code).toBe('token_revoked');
    } finally {
      await long?.stop();
    }
  });

  it('an API enforcing no limit (JWT_MAX_TOKEN_LIFETIME=0): no not-before is pruned, whatever the command\'s own limit; expired token ids still are', { timeout: 180_000 }, async () => {
    let unlimited: ApiProcess | undefined;
    try {
      unlimited = await spawnApi({ ...stack.env, JWT_MAX_TOKEN_LIFETIME: '0' });
      await waitFor(async () => (await declared()).some((d) => d.age === 0), { timeoutMs: 30_000, what: 'the unlimited API\'s declaration' });
    } finally {
      await unlimited?.stop();
    }
    // Stopped: its declaration still counts within the window (it may come back with the same settings).
    const tenant = newTenant();
    const now = await dbNow();
    await notBefore(tenant, now - 400 * 24 * HOUR);
    await revokeTokens({ ownerUrl: stack.db.ownerUrl, prefix: stack.prefix }, { tenantId: tenant, jti: 'j-expired', expiresAt: new Date(now - HOUR), revokedBy: 'test-operator' });
    const pruned = await tokenCli(['prune-revocations'], { JWT_MAX_TOKEN_LIFETIME: '1h' });
    expect(pruned.code, pruned.err).toBe(0);
    expect(pruned.out).toMatch(/pruned 1 .*JWT_MAX_TOKEN_LIFETIME=0/);
    expect(await left(tenant)).toEqual([400 * 24]);
  });

  it('two prunes at once (two schedulers, an overlapping cron) both succeed: the second waits for the first instead of deadlocking on the table', { timeout: 180_000 }, async () => {
    // Both got past the table lock (SHARE lets two in) and queued on a row one of them deletes; then each
    // waited for the other's SHARE lock to delete the declarations not seen: "deadlock detected", one failed.
    const tenant = newTenant();
    await revokeTokens({ ownerUrl: stack.db.ownerUrl, prefix: stack.prefix }, { tenantId: tenant, jti: 'j-held', expiresAt: new Date((await dbNow()) - HOUR), revokedBy: 'test-operator' });
    // As the superuser: the owner's own policies hide an expired row from its SELECT.
    const holder = new pg.Client({ connectionString: stack.db.adminUrl });
    await holder.connect();
    try {
      await holder.query('begin');
      expect((await holder.query(`select 1 from token_revocations where tenant_id = $1 for update`, [tenant])).rowCount).toBe(1);
      const limits = { maxTokenLifetimeMs: stack.config.JWT_MAX_TOKEN_LIFETIME, clockToleranceMs: stack.config.JWT_CLOCK_TOLERANCE };
      // Each waits as long as the holder holds the row (its lock timeout is the test's, not the command's PRUNE_LOCK_TIMEOUT_MS).
      const wait = { lockTimeoutMs: 120_000 };
      const prunes = [pruneRevocations(stack.db.ownerUrl, limits, wait), pruneRevocations(stack.db.ownerUrl, limits, wait)].map((p) => p.then((r) => r, (e: unknown) => e as Error));
      // Both wait (on the held row, or on the first prune's lock) before the holder lets them go.
      await waitFor(
        async () =>
          Number((await stack.db.admin(`select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock' and query ~ 'token_(revocations|age_limits)'`)).rows[0].n) >= 2,
        { timeoutMs: 30_000, what: 'both prunes waiting' },
      );
      await holder.query('commit');
      const results = await Promise.all(prunes);
      expect(results.filter((r) => r instanceof Error).map((e) => (e as Error).message)).toEqual([]);
      expect(results.map((r) => (r as { pruned: number }).pruned).sort()).toEqual([0, 1]);
    } finally {
      await holder.query('rollback').catch(() => {});
      await holder.end();
    }
  });

  it('no API process seen (a fresh install, or every API of an earlier release): every not-before is kept, with a message saying why', async () => {
    await stack.db.owner(`delete from token_age_limits`);
    const tenant = newTenant();
    await notBefore(tenant, (await dbNow()) - 400 * 24 * HOUR);
    const pruned = await tokenCli(['prune-revocations'], { JWT_MAX_TOKEN_LIFETIME: '1h' });
    expect(pruned.code, pruned.err).toBe(0);
    expect(pruned.out).toMatch(/pruned 0 /);
    expect(pruned.err).toMatch(/no API process has declared the token age it enforces/);
    expect(await left(tenant)).toEqual([400 * 24]);
  });
});
