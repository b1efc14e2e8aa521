import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import pg from 'pg';
import { SignJWT } from 'jose';
import { api, newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { spawnApi, type ApiProcess } from '../helpers/api-process.ts';
import { TEST_JWT_SECRET } from '../helpers/env.ts';
import { waitFor } from '../helpers/poll.ts';
import { runTokenCli } from '../helpers/token-cli.ts';
import { freePort } from '../helpers/own-infra.ts';
import { signDevToken } from '../../src/platform/tenancy/jwt.ts';
import { loadRevocations, revokeTokens, tokenMaxAgeSeconds, type RevocationRequest } from '../../src/platform/tenancy/token-revocations.ts';
import { createOrm } from '../../src/platform/db/orm.ts';
import { entities } from '../../src/entities.ts';
import { OPERATOR_ROLE } from '../../src/platform/http/admin-auth.middleware.ts';
import { postSignIn, sessionCookieOf } from '../helpers/dashboard-sign-in.ts';

/**
 * Token revocation (ADR 0018): an operator revokes a token by its `jti`, or every token of a tenant (or
 * of one subject) issued before a time, and every API process refuses it — 401 problem+json
 * `token_revoked` — within a bounded time, with no database read per request: the in-process copy is
 * updated by a Redis message, reloaded whole when its subscription comes back, and loaded at start.
 * TOKEN_REVOCATION_RECONCILE is 1 h here, so only the message or the resubscription's reload can explain
 * a refusal (each test polls with a deadline, no sleeps).
 */
const RUNS = '/api/v1/golden-path/runs';
let stack: TestStack;
let announcer: Redis;

beforeAll(async () => {
  stack = await startStack({ ownRedis: true, env: { TOKEN_REVOCATION_RECONCILE: '1h' } });
  announcer = new Redis(stack.ownRedis!.url, { maxRetriesPerRequest: 1, enableOfflineQueue: false, retryStrategy: () => 100 });
  announcer.on('error', () => {});
  await waitFor(() => announcer.status === 'ready', { what: 'announcer connection' });
});
afterAll(async () => {
  announcer?.disconnect();
  await stack?.stop();
});

const token = (tenantId: string, sub: string, issuedAt?: number) => signDevToken(stack.config, { tenantId, sub, ...(issuedAt !== undefined ? { issuedAt } : {}) });
const nowSeconds = () => Math.floor(Date.now() / 1000);
/** What the CLI calls: stored as the owner role, announced over the stack's Redis. */
const revoke = (req: { tenantId: string; jti: string } | { tenantId: string; subject?: string; issuedBefore: Date }) =>
  revokeTokens({ ownerUrl: stack.db.ownerUrl, redis: announcer, prefix: stack.prefix }, { revokedBy: 'test-operator', ...req } as RevocationRequest);
const jtiOf = (jwt: string) => (JSON.parse(Buffer.from(jwt.split('.')[1]!, 'base64url').toString()) as { jti: string }).jti;

async function statusOn(baseUrl: string, jwt: string): Promise<number> {
  return (await fetch(`${baseUrl}${RUNS}`, { headers: { authorization: `Bearer ${jwt}` } })).status;
}
const refusedOn = (baseUrl: string, jwt: string, what: string) => waitFor(async () => (await statusOn(baseUrl, jwt)) === 401, { timeoutMs: 15_000, what });

/** `npm run token -- …` itself (src/cli/token.ts), with the stack's settings. */
const tokenCli = (args: string[], env: Record<string, string> = {}) => runTokenCli(stack.env, args, env);

function expectRevokedProblem(res: Awaited<ReturnType<typeof api>>) {
  expect(res.status, res.text).toBe(401);
  expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  expect(res.json).toMatchObject({ type: 'https://docs.dealix.dev/problems/token_revoked', title: 'Token Revoked', status: 401, code: 'token_revoked' });
}

describe('token revocation', () => {
  it('a token revoked by its jti: accepted (and remembered), then refused with 401 token_revoked; the tenant\'s other tokens still work', async () => {
    const tenant = newTenant();
    const jwt = await token(tenant, 'alice');
    const other = await token(tenant, 'alice');
    expect((await api(stack, 'GET', RUNS, { token: jwt })).status).toBe(200);
    expect((await api(stack, 'GET', RUNS, { token: jwt })).status).toBe(200); // answered from the verified-token memo (ADR 0006)

    const done = await revoke({ tenantId: tenant, jti: jtiOf(jwt) });
    expect(done.announced).toBe(true);
    await refusedOn(stack.baseUrl, jwt, 'the revoked token refused');
    expectRevokedProblem(await api(stack, 'GET', RUNS, { token: jwt }));
    expect((await api(stack, 'GET', RUNS, { token: other })).status).toBe(200);
  });

  it('a tenant-wide not-before refuses the tenant\'s tokens issued before it, not newer ones nor other tenants\'', async () => {
    // A token without iat is refused by any not-before (unit test token-revocations), but reaches none:
    // JWT_MAX_TOKEN_LIFETIME, on by default, refuses it first (below).
    const tenant = newTenant();
    const elsewhere = newTenant();
    const older = await token(tenant, 'bob', nowSeconds() - 120);
    const newer = await token(tenant, 'bob');
    const otherTenant = await token(elsewhere, 'bob', nowSeconds() - 120);
    for (const jwt of [older, newer, otherTenant]) expect(await statusOn(stack.baseUrl, jwt)).toBe(200);

    await revoke({ tenantId: tenant, issuedBefore: new Date(Date.now() - 60_000) });
    await refusedOn(stack.baseUrl, older, 'the older token refused');
    expectRevokedProblem(await api(stack, 'GET', RUNS, { token: older }));
    expect(await statusOn(stack.baseUrl, newer)).toBe(200);
    expect(await statusOn(stack.baseUrl, otherTenant)).toBe(200);
  });

  it("a subject's not-before refuses that subject's older tokens only", async () => {
    const tenant = newTenant();
    const leaver = await token(tenant, 'leaver', nowSeconds() - 120);
    const stayer = await token(tenant, 'stayer', nowSeconds() - 120);
    expect(await statusOn(stack.baseUrl, leaver)).toBe(200);
    await revoke({ tenantId: tenant, subject: 'leaver', issuedBefore: new Date() });
    await refusedOn(stack.baseUrl, leaver, "the leaver's token refused");
    expect(await statusOn(stack.baseUrl, stayer)).toBe(200);
  });

  it("--issued-before now: the database's time plus JWT_CLOCK_TOLERANCE, so a token stamped by an identity provider whose clock runs ahead is refused too", { timeout: 120_000 }, async () => {
    const tenant = newTenant();
    const toleranceMs = Math.ceil(stack.config.JWT_CLOCK_TOLERANCE / 1000) * 1000;
    expect(toleranceMs).toBeGreaterThanOrEqual(2_000); // the tokens below sit 1 s inside and 1 s outside it
    const cli = await tokenCli(['revoke', '--tenant', tenant, '--sub', 'gina', '--issued-before', 'now']);
    expect(cli.code, cli.err).toBe(0);
    // Stamped in one statement: the margin over the database's time is exactly the tolerance, whatever the CLI's clock.
    const { rows } = await stack.db.admin(
      `select (extract(epoch from not_before - created_at) * 1000)::float8 as margin_ms, extract(epoch from not_before)::float8 as not_before from token_revocations where tenant_id = $1`,
      [tenant],
    );
    expect(rows).toHaveLength(1);
    expect(rows[0].margin_ms).toBe(toleranceMs);
    const notBefore = rows[0].not_before as number;
    // Issued "just before now" by an identity provider 1 s short of the tolerance ahead: its iat is after the database's now.
    const aheadOfClock = await token(tenant, 'gina', Math.ceil(notBefore) - 2);
    const afterward = await token(tenant, 'gina', Math.ceil(notBefore) + 1);
    await refusedOn(stack.baseUrl, aheadOfClock, 'a token stamped ahead of the clock, issued before the revocation, refused');
    // Its iat is 1 s past now plus the tolerance: refused as issued in the future (JWT_MAX_TOKEN_LIFETIME's
    // check) until the clock reaches it, then accepted, the not-before notwithstanding.
    await waitFor(async () => (await statusOn(stack.baseUrl, afterward)) === 200, { timeoutMs: 15_000, what: 'the token issued after the revocation accepted' });
  });

  it("an operator's tokens are revoked the same way: the dashboard refuses them as a bearer and ends the session one started", async () => {
    // The dashboard's bearer and session paths verify the token with the same verifier (ADR 0018), so
    // an operator token someone else holds (leaked, an operator who left) ends by a revocation, not only
    // by rotating the signing key; the list is PostgreSQL's, so a Redis flush (which forgets the
    // dashboard's sign-outs) does not bring it back.
    const tenant = newTenant();
    const operator = (sub: string) => signDevToken(stack.config, { tenantId: tenant, sub, roles: [OPERATOR_ROLE], issuedAt: nowSeconds() - 120 });
    const bearer = await operator('ops-leaver');
    const link = await postSignIn(stack.baseUrl, await operator('ops-leaver'));
    const session = { cookie: sessionCookieOf(link.setCookie) };
    const other = await operator('ops-stayer');
    const board = (headers: Record<string, string>) => fetch(`${stack.baseUrl}/admin/queues/api/queues`, { headers });
    expect((await board({ authorization: `Bearer ${bearer}` })).status).toBe(200);
    expect((await board(session)).status).toBe(200);

    await revoke({ tenantId: tenant, subject: 'ops-leaver', issuedBefore: new Date() });
    await waitFor(async () => (await board({ authorization: `Bearer ${bearer}` })).status === 401, { timeoutMs: 15_000, what: "the revoked operator's bearer token refused" });
    const refused = await api(stack, 'GET', '/admin/queues/api/queues', { token: bearer });
    expect(refused.status).toBe(401);
    expect(refused.json).toMatchObject({ code: 'unauthorized' });
    expect(refused.json.detail).toMatch(/revoked/i);
    expect((await board(session)).status).toBe(401);
    expect((await board({ authorization: `Bearer ${other}` })).status).toBe(200);
    // By its jti alike.
    await revoke({ tenantId: tenant, jti: jtiOf(other) });
    await waitFor(async () => (await board({ authorization: `Bearer ${other}` })).status === 401, { timeoutMs: 15_000, what: 'the operator token revoked by its jti refused' });
  });

  it('a second API process (src/server.ts) sees a revocation too, and one made before it started', { timeout: 120_000 }, async () => {
    const tenant = newTenant();
    const before = await token(tenant, 'dave');
    await revoke({ tenantId: tenant, jti: jtiOf(before) });
    let second: ApiProcess | undefined;
    try {
      second = await spawnApi(stack.env);
      expect(await statusOn(second.baseUrl, before)).toBe(401); // loaded at start
      const jwt = await token(tenant, 'dave');
      expect(await statusOn(second.baseUrl, jwt)).toBe(200);
      expect(await statusOn(stack.baseUrl, jwt)).toBe(200);
      await revoke({ tenantId: tenant, jti: jtiOf(jwt) });
      await refusedOn(second.baseUrl, jwt, 'refused by the second API process');
      await refusedOn(stack.baseUrl, jwt, 'refused by the first API process');
    } finally {
      await second?.stop();
    }
  });

  it('a revocation made while the subscriber was disconnected is picked up by the reload when it resubscribes', { timeout: 120_000 }, async () => {
    const tenant = newTenant();
    const jwt = await token(tenant, 'erin');
    expect(await statusOn(stack.baseUrl, jwt)).toBe(200);
    await stack.ownRedis!.stopServer();
    try {
      const done = await revoke({ tenantId: tenant, jti: jtiOf(jwt) });
      expect(done.announced).toBe(false); // no message: only the reload can tell the API
    } finally {
      await stack.ownRedis!.startServer();
    }
    await refusedOn(stack.baseUrl, jwt, 'refused after the subscriber reconnected and reloaded');
  });

  it('npm run token -- revoke --token <jwt>: stored and announced; the application role can neither remove nor add a revocation', { timeout: 120_000 }, async () => {
    const tenant = newTenant();
    const jwt = await token(tenant, 'frank');
    expect(await statusOn(stack.baseUrl, jwt)).toBe(200);
    const cli = await tokenCli(['revoke', '--token', jwt, '--by', 'ops-test', '--reason', 'leaked in a ticket']);
    expect(cli.code, cli.err).toBe(0);
    expect(JSON.parse(cli.out)).toMatchObject({ revoked: { tenantId: tenant, jti: jtiOf(jwt) }, announced: true });
    await refusedOn(stack.baseUrl, jwt, 'refused after the CLI revoked it');
    const { rows } = await stack.db.admin(`select revoked_by, reason, expires_at > now() as live from token_revocations where tenant_id = $1`, [tenant]);
    expect(rows).toEqual([{ revoked_by: 'ops-test', reason: 'leaked in a ticket', live: true }]);

    const app = new pg.Client({ connectionString: stack.db.appUrl });
    await app.connect();
    try {
      await app.query('begin');
      await app.query(`select set_config('app.tenant_id', $1, true)`, [tenant]);
      await expect(app.query('delete from token_revocations')).rejects.toThrow(/permission denied/);
      await app.query('rollback');
      await app.query('begin');
      await app.query('set local role dealix_system');
      await expect(app.query('delete from token_revocations')).rejects.toThrow(/permission denied/);
      await app.query('rollback');
      await app.query('begin');
      await app.query(`select set_config('app.tenant_id', $1, true)`, [tenant]);
      await expect(
        app.query(`insert into token_revocations (tenant_id, id, jti, revoked_by, created_at) values ($1, $2, 'x', 'app', now())`, [tenant, randomUUID()]),
      ).rejects.toThrow(/permission denied/);
      await app.query('rollback');
    } finally {
      await app.end();
    }
  });

  it('npm run token -- lift: a revocation made in error stops applying on every API process at once, kept as the record; the application role cannot lift one', { timeout: 120_000 }, async () => {
    const tenant = newTenant();
    const jwt = await token(tenant, 'ivy', nowSeconds() - 120);
    expect(await statusOn(stack.baseUrl, jwt)).toBe(200);
    const revoked = await tokenCli(['revoke', '--tenant', tenant, '--issued-before', 'now', '--by', 'ops-test', '--reason', 'wrong tenant']);
    expect(revoked.code, revoked.err).toBe(0);
    const { id } = JSON.parse(revoked.out) as { id: string };
    await refusedOn(stack.baseUrl, jwt, 'refused by the tenant-wide revocation');
    const listed = await tokenCli(['revocations', '--tenant', tenant]);
    expect(listed.code, listed.err).toBe(0);
    expect(listed.out.trim().split('\n').map((l) => JSON.parse(l))).toEqual([
      expect.objectContaining({ id, jti: null, subject: null, revoked_by: 'ops-test', reason: 'wrong tenant', lifted_at: null, lifted_by: null }),
    ]);

    // No code of the application can lift it: UPDATE is not granted (nor to the system role).
    const app = new pg.Client({ connectionString: stack.db.appUrl });
    await app.connect();
    try {
      await app.query('begin');
      await app.query(`select set_config('app.tenant_id', $1, true)`, [tenant]);
      await expect(app.query(`update token_revocations set lifted_at = now(), lifted_by = 'app'`)).rejects.toThrow(/permission denied/);
      await app.query('rollback');
      await app.query('begin');
      await app.query('set local role dealix_system');
      await expect(app.query(`update token_revocations set lifted_at = now(), lifted_by = 'app'`)).rejects.toThrow(/permission denied/);
      await app.query('rollback');
    } finally {
      await app.end();
    }
    expect(await statusOn(stack.baseUrl, jwt)).toBe(401);

    const lifted = await tokenCli(['lift', '--tenant', tenant, '--id', id, '--by', 'ops-lead']);
    expect(lifted.code, lifted.err).toBe(0);
    expect(JSON.parse(lifted.out)).toMatchObject({ lifted: { id, lifted_by: 'ops-lead' }, announced: true });
    // TOKEN_REVOCATION_RECONCILE is 1 h here: only the lift's message can explain the token working again.
    await waitFor(async () => (await statusOn(stack.baseUrl, jwt)) === 200, { timeoutMs: 15_000, what: 'the token accepted again after the lift' });

    const again = await tokenCli(['lift', '--tenant', tenant, '--id', id]);
    expect(again.code).toBe(1);
    expect(again.err).toMatch(/no revocation .* in force/);
    const { rows } = await stack.db.admin(`select revoked_by, lifted_by, lifted_at is not null as lifted from token_revocations where tenant_id = $1`, [tenant]);
    expect(rows).toEqual([{ revoked_by: 'ops-test', lifted_by: 'ops-lead', lifted: true }]);
  });

  it('a token-id revocation lasts as long as the verifier accepts the token: its exp plus JWT_CLOCK_TOLERANCE rounded up to whole seconds, as the verifier applies it', { timeout: 60_000 }, async () => {
    // The verifier gives jose Math.round(1500 ms / 1000) = 2 s: a row kept only 1.5 s past exp would be
    // dropped by a reload while the token still verified.
    const tenant = newTenant();
    const cli = await tokenCli(['revoke', '--tenant', tenant, '--jti', 'j-tolerance', '--expires', '2030-01-01T00:00:00Z'], { JWT_CLOCK_TOLERANCE: '1500ms' });
    expect(cli.code, cli.err).toBe(0);
    const { rows } = await stack.db.admin(`select extract(epoch from expires_at)::float8 as expires from token_revocations where tenant_id = $1`, [tenant]);
    expect(rows).toEqual([{ expires: Date.parse('2030-01-01T00:00:02Z') / 1000 }]);
  });

  it("a token-id revocation outlives its expiry by REVOKED_ID_KEPT_AFTER_EXPIRY (the database's clock decides the reload, the API host's jose the token): a reload keeps a row expired a moment ago and prune leaves it; one expired longer ago is dropped and pruned", { timeout: 60_000 }, async () => {
    // An API host whose clock runs behind the database's still accepts the token for that lag after the
    // database thinks it expired: the row must still be loaded then, or the revoked token is let through.
    const tenant = newTenant();
    const stored = (await stack.db.admin(`select now() as now`)).rows[0] as { now: Date };
    const dbNow = stored.now.getTime();
    await revokeTokens({ ownerUrl: stack.db.ownerUrl, prefix: stack.prefix }, { tenantId: tenant, jti: 'j-just-expired', expiresAt: new Date(dbNow - 2_000), revokedBy: 'test-operator' });
    await revokeTokens({ ownerUrl: stack.db.ownerUrl, prefix: stack.prefix }, { tenantId: tenant, jti: 'j-long-expired', expiresAt: new Date(dbNow - 3_600_000), revokedBy: 'test-operator' });
    const orm = await createOrm(stack.config, { entities, poolMax: 1 });
    try {
      const loaded = (await loadRevocations(orm)).filter((r) => r.tenantId === tenant).map((r) => ('jti' in r ? r.jti : null));
      expect(loaded).toEqual(['j-just-expired']);
    } finally {
      await orm.close(true);
    }
    const pruned = await tokenCli(['prune-revocations']);
    expect(pruned.code, pruned.err).toBe(0);
    const { rows } = await stack.db.admin(`select jti from token_revocations where tenant_id = $1 order by jti`, [tenant]);
    expect(rows).toEqual([{ jti: 'j-just-expired' }]);
  });

  it("a not-before row is pruned once every token it could refuse is past the API's JWT_MAX_TOKEN_LIFETIME (plus the clock tolerance and REVOKED_ID_KEPT_AFTER_EXPIRY), whatever shorter limit the command runs with; newer ones, and all of them with the limit off, stay", { timeout: 60_000 }, async () => {
    const tenant = newTenant();
    const dbNow = ((await stack.db.admin(`select now() as now`)).rows[0] as { now: Date }).now.getTime();
    // The age the stack's API processes declare (24 h, the default, plus the tolerance): the prune goes by it (token-revocation-prune.test.ts).
    const margin = tokenMaxAgeSeconds({ maxTokenLifetimeMs: stack.config.JWT_MAX_TOKEN_LIFETIME, clockToleranceMs: stack.config.JWT_CLOCK_TOLERANCE }) * 1000 + 300_000;
    const store = (subject: string | undefined, ageMs: number) =>
      revokeTokens({ ownerUrl: stack.db.ownerUrl, prefix: stack.prefix }, { tenantId: tenant, ...(subject ? { subject } : {}), issuedBefore: new Date(dbNow - ageMs), revokedBy: 'test-operator' });
    await store(undefined, margin + 3_600_000);
    await store('old-leaver', margin + 3_600_000);
    await store(undefined, margin - 120_000); // a token issued just before it may still verify on a host whose clock lags
    await store('recent-leaver', 600_000);
    const left = async () =>
      (await stack.db.admin(`select coalesce(subject, '*') || ' ' || (extract(epoch from $2::timestamptz - not_before) > $3::float8)::text as r from token_revocations where tenant_id = $1 order by 1`, [tenant, new Date(dbNow), margin / 1000 + 60])).rows.map(
        (r: { r: string }) => r.r,
      );
    const all = ['* false', '* true', 'old-leaver true', 'recent-leaver false'];
    expect(await left()).toEqual(all);

    // The limit off: no token's age is bounded (one without iat is accepted), so no not-before can go.
    const off = await tokenCli(['prune-revocations'], { JWT_MAX_TOKEN_LIFETIME: '0' });
    expect(off.code, off.err).toBe(0);
    expect(await left()).toEqual(all);
    // Nor may the owner delete one without declaring the token age the API enforces (the prune policy), tenant unbound.
    const owner = new pg.Client({ connectionString: stack.db.ownerUrl });
    await owner.connect();
    try {
      expect((await owner.query(`delete from token_revocations where not_before is not null`)).rowCount).toBe(0);
    } finally {
      await owner.end();
    }
    expect(await left()).toEqual(all);

    // The command's own, shorter limit does not shorten the API's: the row inside the API's margin stays.
    const pruned = await tokenCli(['prune-revocations'], { JWT_MAX_TOKEN_LIFETIME: '1h' });
    expect(pruned.code, pruned.err).toBe(0);
    expect(pruned.out).toMatch(/pruned 2 /);
    expect(await left()).toEqual(['* false', 'recent-leaver false']);
  });

  it('JWT_MAX_TOKEN_LIFETIME (24 h by default): a token issued longer ago, or without iat, is refused with 401, whatever its exp', async () => {
    const tenant = newTenant();
    const old = await signDevToken(stack.config, { tenantId: tenant, sub: 'ivan', issuedAt: nowSeconds() - 25 * 3600, ttlSeconds: 600 });
    const fresh = await signDevToken(stack.config, { tenantId: tenant, sub: 'ivan', issuedAt: nowSeconds() - 23 * 3600, ttlSeconds: 600 });
    const withoutIat = await new SignJWT({ tenant_id: tenant, roles: [] })
      .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
      .setSubject('ivan')
      .setIssuer(stack.config.JWT_ISSUER)
      .setAudience(stack.config.JWT_AUDIENCE)
      .setExpirationTime(nowSeconds() + 600)
      .sign(new TextEncoder().encode(TEST_JWT_SECRET));
    expect((await api(stack, 'GET', RUNS, { token: fresh })).status).toBe(200);
    for (const [jwt, detail] of [
      [old, 'The token was issued longer ago than JWT_MAX_TOKEN_LIFETIME allows.'],
      [withoutIat, "The token lacks an iat claim, which is required (JWT_MAX_TOKEN_LIFETIME)."],
    ] as const) {
      const res = await api(stack, 'GET', RUNS, { token: jwt });
      expect(res.status, res.text).toBe(401);
      expect(res.json).toMatchObject({ code: 'unauthorized', detail });
    }
  });

  it('npm run token -- revoke with an empty --sub or --jti (an unset shell variable) is refused with exit 2 and stores nothing: it would revoke no token while reporting success', { timeout: 60_000 }, async () => {
    const tenant = newTenant();
    for (const args of [
      ['--sub', '', '--issued-before', 'now'],
      ['--sub', ' ', '--issued-before', 'now'],
      ['--jti', ''],
      ['--jti', ' j-1'],
    ]) {
      const cli = await tokenCli(['revoke', '--tenant', tenant, ...args]);
      expect(cli.code, `${args.join(' ')}: ${cli.err}`).toBe(2);
      expect(cli.err).toMatch(/--(sub|jti)/);
    }
    expect((await stack.db.admin(`select count(*)::int as n from token_revocations where tenant_id = $1`, [tenant])).rows).toEqual([{ n: 0 }]);
    // Nor can an empty one be stored by other means (the owner writes the table): the table refuses it.
    await expect(
      stack.db.admin(`insert into token_revocations (tenant_id, id, jti, revoked_by, created_at) values ($1, $2, '', 'x', now())`, [tenant, randomUUID()]),
    ).rejects.toThrow(/token_revocations_jti_not_empty/);
    await expect(
      stack.db.admin(`insert into token_revocations (tenant_id, id, subject, not_before, revoked_by, created_at) values ($1, $2, '', now(), 'x', now())`, [tenant, randomUUID()]),
    ).rejects.toThrow(/token_revocations_subject_not_empty/);
  });

  it('Redis unreachable from the start: the list still loads from PostgreSQL, and its reconcile keeps it fresh without Redis', { timeout: 120_000 }, async () => {
    // Redis only carries the announcements: PostgreSQL holds the list, and TOKEN_REVOCATION_RECONCILE bounds the rest.
    const tenant = newTenant();
    const revokedEarlier = await token(tenant, 'hank');
    await revoke({ tenantId: tenant, jti: jtiOf(revokedEarlier) });
    let cut: ApiProcess | undefined;
    try {
      cut = await spawnApi({ ...stack.env, REDIS_URL: `redis://127.0.0.1:${await freePort()}`, TOKEN_REVOCATION_RECONCILE: '1s' });
      const jwt = await token(tenant, 'hank');
      await waitFor(async () => (await statusOn(cut!.baseUrl, jwt)) === 200, { timeoutMs: 30_000, what: 'the list loaded from PostgreSQL with Redis down' });
      expect(await statusOn(cut.baseUrl, revokedEarlier)).toBe(401);
      const ready = await fetch(`${cut.baseUrl}/readyz`);
      expect(await ready.json()).toMatchObject({ checks: { token_revocations: { ok: true }, redis: { ok: false } } });

      const done = await revokeTokens({ ownerUrl: stack.db.ownerUrl, prefix: stack.prefix }, { tenantId: tenant, jti: jtiOf(jwt), revokedBy: 'test-operator' });
      expect(done.announced).toBe(false); // no message: only the reconcile, reading PostgreSQL, can tell this API
      await refusedOn(cut.baseUrl, jwt, 'refused by the reconcile while Redis is still down');
    } finally {
      await cut?.stop('SIGKILL');
    }
  });

  it('fail-closed: an API that cannot load the list (PostgreSQL unreachable) answers every token 503, never lets one through unchecked', { timeout: 120_000 }, async () => {
    let blind: ApiProcess | undefined;
    try {
      blind = await spawnApi({ ...stack.env, DATABASE_URL: 'postgres://dealix_app:dealix_app@127.0.0.1:1/none' });
      const jwt = await token(newTenant(), 'gina');
      const res = await fetch(`${blind.baseUrl}${RUNS}`, { headers: { authorization: `Bearer ${jwt}` } });
      expect(res.status).toBe(503);
      expect(res.headers.get('retry-after')).toBe('1');
      expect(await res.json()).toMatchObject({ code: 'service_unavailable', detail: expect.stringContaining('token revocation list is not loaded') });
      expect(blind.lines().some((l) => l.msg === 'token revocations not loaded: every token is answered 503 until they are')).toBe(true);
      expect((await fetch(`${blind.baseUrl}/healthz`)).status).toBe(200);
      // The dashboard too: an operator token is not checked either, so 503 (retry), not 401 (sign in again).
      const operator = await signDevToken(stack.config, { tenantId: newTenant(), sub: 'ops', roles: ['platform-operator'] });
      const dashboard = await fetch(`${blind.baseUrl}/admin/queues`, { headers: { authorization: `Bearer ${operator}` } });
      expect(dashboard.status).toBe(503);
      // A load balancer routes nothing to it: /readyz names the list (beside PostgreSQL).
      const ready = await fetch(`${blind.baseUrl}/readyz`);
      expect(ready.status).toBe(503);
      expect(await ready.json()).toMatchObject({ checks: { token_revocations: { ok: false, detail: 'not loaded yet: every token is answered 503' } } });
    } finally {
      await blind?.stop('SIGKILL');
    }
  });
});
