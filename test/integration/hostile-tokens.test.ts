import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createHmac, randomUUID } from 'node:crypto';
import { SignJWT, UnsecuredJWT, exportJWK, exportSPKI, generateKeyPair, type JWTPayload } from 'jose';
import { api, CLASS_A_SUBMISSION, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { TEST_JWT_SECRET } from '../helpers/env.ts';
import { waitFor } from '../helpers/poll.ts';

/**
 * Hostile bearer tokens and cross-tenant ids: every forged, stale or misdirected token is a 401 (or
 * a 404 for another tenant's ids), no response carries the target's data, and each attempt leaves a
 * log line (read back from the API's logger) that never contains the token itself.
 */

interface LogCapture {
  dest: { write(line: string): void };
  lines(): Array<Record<string, any>>;
}
function captureLogs(): LogCapture {
  const raw: string[] = [];
  return {
    dest: { write: (line: string) => void raw.push(line) },
    lines: () => raw.map((l) => JSON.parse(l) as Record<string, any>),
  };
}

const ISS = 'dealix-dev';
const AUD = 'dealix-api';
const secret = new TextEncoder().encode(TEST_JWT_SECRET);
const now = () => Math.floor(Date.now() / 1000);
const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');

const tenantA = newTenant();
const tenantB = newTenant();
const logs = captureLogs();
let stack: TestStack;
let victim: { runId: string; approvalId: string; evidenceId: string; pendingApprovalId: string; pendingRunId: string };

function claims(over: Record<string, unknown> = {}): JWTPayload {
  return { tenant_id: tenantA, roles: ['approver'], sub: 'mallory', iss: ISS, aud: AUD, iat: now(), exp: now() + 600, ...over };
}
const hs256 = (payload: JWTPayload, key: Uint8Array = secret) => new SignJWT(payload).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).sign(key);
/** HS256 over any header, including ones jose refuses to produce. */
const signRaw = async (header: Record<string, unknown>, payload: JWTPayload) => {
  const input = `${b64(header)}.${b64(payload)}`;
  return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
};
const withoutClaim = (name: string) => {
  const c = claims();
  delete c[name];
  return c;
};

/** Sends one request with a unique correlation id, so the test can find the log lines it caused. */
async function attempt(s: TestStack, method: string, path: string, authorization: string | undefined, body?: unknown) {
  const correlationId = `hostile-${randomUUID()}`;
  const headers: Record<string, string> = { 'X-Correlation-Id': correlationId, 'Idempotency-Key': randomUUID() };
  if (authorization !== undefined) headers.authorization = authorization;
  const res = await api(s, method, path, { headers, ...(body !== undefined ? { body } : {}) });
  return { ...res, correlationId };
}

function expectNoVictimData(text: string) {
  for (const id of Object.values(victim)) expect(text).not.toContain(id);
  expect(text).not.toContain(CLASS_A_SUBMISSION.partner.name);
}

async function logLinesFor(correlationId: string) {
  return waitFor(() => {
    const found = logs.lines().filter((l) => l.correlation_id === correlationId);
    return found.length ? found : undefined;
  }, { what: `a log line for ${correlationId}`, timeoutMs: 10_000 });
}

async function waitRun(token: string, id: string, statuses: string[]) {
  return waitFor(async () => {
    const r = await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token });
    return statuses.includes(r.json?.status) ? r.json : undefined;
  }, { what: `run ${id} ${statuses.join('|')}`, timeoutMs: 60_000 });
}

beforeAll(async () => {
  stack = await startStack({ env: { LOG_LEVEL: 'warn' }, logDestination: logs.dest });
  await stack.spawnWorker();
  // Real data of tenant B: a completed run (with approval and evidence) and a run waiting for approval.
  const owner = await stack.token({ tenantId: tenantB, sub: 'bob' });
  const submit = (body: unknown) => api(stack, 'POST', '/api/v1/golden-path/run', { token: owner, body, headers: { 'Idempotency-Key': randomUUID() } });
  const done = await submit(CLASS_A_SUBMISSION);
  const pending = await submit(SAMPLE_SUBMISSION);
  const run = await waitRun(owner, done.json.run_id, ['completed']);
  const waiting = await waitRun(owner, pending.json.run_id, ['waiting']);
  victim = {
    runId: run.run_id,
    approvalId: run.steps[2].output.approval_request_id,
    evidenceId: run.steps[3].output.evidence_pack_id,
    pendingRunId: waiting.run_id,
    pendingApprovalId: waiting.steps[2].output.approval_request_id,
  };
});
afterAll(async () => stack?.stop());

describe('forged, stale and misdirected tokens', () => {
  const cases: Array<[string, () => Promise<string>]> = [
    ['alg none (unsecured JWT)', async () => new UnsecuredJWT(claims()).encode()],
    ['alg none with a copied signature', async () => {
      const good = await hs256(claims());
      return `${b64({ alg: 'none', typ: 'JWT' })}.${good.split('.')[1]}.${good.split('.')[2]}`;
    }],
    ['RS256 token on an HS256 deployment', async () => {
      const { privateKey } = await generateKeyPair('RS256');
      return new SignJWT(claims()).setProtectedHeader({ alg: 'RS256' }).sign(privateKey);
    }],
    ['HS512 with the right secret (algorithm not on the allow-list)', async () => new SignJWT(claims()).setProtectedHeader({ alg: 'HS512' }).sign(new TextEncoder().encode(TEST_JWT_SECRET.repeat(2)))],
    ['signed with another secret', async () => hs256(claims(), new TextEncoder().encode('x'.repeat(40)))],
    ['expired', async () => hs256(claims({ iat: now() - 7200, exp: now() - 3600 }))],
    ['not yet valid (nbf in the future)', async () => hs256(claims({ nbf: now() + 3600 }))],
    ['wrong issuer', async () => hs256(claims({ iss: 'evil-issuer' }))],
    ['wrong audience', async () => hs256(claims({ aud: 'another-api' }))],
    ['no exp', async () => hs256(withoutClaim('exp'))],
    ['no sub', async () => hs256(withoutClaim('sub'))],
    ['no tenant_id', async () => hs256(withoutClaim('tenant_id'))],
    ['non-UUID tenant_id', async () => hs256(claims({ tenant_id: 'tenant-b' }))],
    ['tenant_id as an array', async () => hs256(claims({ tenant_id: [tenantA, tenantB] }))],
    ['SQL in tenant_id', async () => hs256(claims({ tenant_id: `${tenantB}' or '1'='1` }))],
    ['tampered payload (tenant switched to B, signature kept)', async () => {
      const [h, , sig] = (await hs256(claims())).split('.');
      return `${h}.${b64(claims({ tenant_id: tenantB }))}.${sig}`;
    }],
    ['tampered header (alg switched, signature kept)', async () => {
      const [, p, sig] = (await hs256(claims())).split('.');
      return `${b64({ alg: 'HS384', typ: 'JWT' })}.${p}.${sig}`;
    }],
    ['unknown critical header (correctly signed)', async () => signRaw({ alg: 'HS256', typ: 'JWT', crit: ['x-evil'], 'x-evil': true }, claims())],
    ['signature stripped', async () => (await hs256(claims())).split('.').slice(0, 2).join('.') + '.'],
    // Correctly signed, but text PostgreSQL cannot store (a run's principal, a decision's approver).
    ['NUL in sub (correctly signed)', async () => hs256(claims({ sub: 'mal\u0000lory' }))],
    ['unpaired surrogate in sub (correctly signed)', async () => hs256(claims({ sub: 'mal\ud800lory' }))],
    ['control character in a role (correctly signed)', async () => hs256(claims({ roles: ['appro\u0007ver'] }))],
    // Correctly signed, but no subject once trimmed, or one that would pass for another once trimmed: refused, never trimmed.
    ['empty sub (correctly signed)', async () => hs256(claims({ sub: '' }))],
    ['whitespace-only sub (correctly signed)', async () => hs256(claims({ sub: '   ' }))],
    ['sub with a trailing space (correctly signed)', async () => hs256(claims({ sub: 'mallory ' }))],
    ['tenant_id with a leading space (correctly signed)', async () => hs256(claims({ tenant_id: ` ${tenantA}` }))],
    // Correctly signed, but a tenant_id that is not exactly a UUID: never trimmed, normalised or guessed at.
    ['empty tenant_id (correctly signed)', async () => hs256(claims({ tenant_id: '' }))],
    ['null tenant_id (correctly signed)', async () => hs256(claims({ tenant_id: null }))],
    ['tenant_id as an object (correctly signed)', async () => hs256(claims({ tenant_id: { id: tenantA } }))],
    ['very long tenant_id (correctly signed)', async () => hs256(claims({ tenant_id: `${tenantA}${'0'.repeat(4000)}` }))],
    ['tenant_id with a trailing newline (correctly signed)', async () => hs256(claims({ tenant_id: `${tenantA}\n` }))],
    ['tenant_id behind a zero-width space (correctly signed)', async () => hs256(claims({ tenant_id: `\u200b${tenantA}` }))],
    ['tenant_id with a full-width digit (correctly signed)', async () => hs256(claims({ tenant_id: tenantA.replace(/[0-9]/, (d) => String.fromCharCode(0xff10 + Number(d))) }))],
    ['tenant_id in braces (correctly signed)', async () => hs256(claims({ tenant_id: `{${tenantA}}` }))],
    ['tenant_id as a URN (correctly signed)', async () => hs256(claims({ tenant_id: `urn:uuid:${tenantA}` }))],
    ['tenant_id without hyphens (correctly signed)', async () => hs256(claims({ tenant_id: tenantA.replace(/-/g, '') }))],
    ['roles as a string (correctly signed)', async () => hs256(claims({ roles: 'approver' }))],
  ];

  it('the untampered token these cases start from is accepted (the control case)', async () => {
    const res = await attempt(stack, 'GET', '/api/v1/golden-path/runs', `Bearer ${await hs256(claims())}`);
    expect(res.status).toBe(200);
    expect((await attempt(stack, 'GET', '/api/v1/golden-path/runs', `Bearer ${await signRaw({ alg: 'HS256', typ: 'JWT' }, claims())}`)).status).toBe(200);
  });

  for (const [name, make] of cases) {
    it(`${name} → 401 without data, and the rejection is logged`, async () => {
      const token = await make();
      const res = await attempt(stack, 'GET', `/api/v1/golden-path/runs/${victim.runId}`, `Bearer ${token}`);
      expect(res.status).toBe(401);
      expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
      expect(res.headers.get('www-authenticate')).toBe('Bearer');
      expect(res.json.code).toBe('unauthorized');
      expectNoVictimData(res.text);
      const lines = await logLinesFor(res.correlationId);
      expect(lines.some((l) => l.security_event === 'token_rejected')).toBe(true);
      for (const l of lines) expect(JSON.stringify(l)).not.toContain(token.split('.')[2] || token);
    });
  }

  it('a forged token cannot write either: no run is created', async () => {
    const token = await hs256(claims({ tenant_id: tenantB }), new TextEncoder().encode('y'.repeat(40)));
    const res = await attempt(stack, 'POST', '/api/v1/golden-path/run', `Bearer ${token}`, CLASS_A_SUBMISSION);
    expect(res.status).toBe(401);
    const { rows } = await stack.db.admin(`select count(*)::int as n from durable_runs where tenant_id = $1`, [tenantB]);
    expect(rows[0].n).toBe(2);
  });

  it('a signed token whose sub PostgreSQL cannot store cannot write: 401, not a 500, and no run', async () => {
    const token = await hs256(claims({ sub: 'mal\u0000lory' }));
    const before = await stack.db.admin(`select count(*)::int as n from durable_runs where tenant_id = $1`, [tenantA]);
    const res = await attempt(stack, 'POST', '/api/v1/golden-path/run', `Bearer ${token}`, CLASS_A_SUBMISSION);
    expect(res.status).toBe(401);
    expect(res.json.code).toBe('unauthorized');
    const after = await stack.db.admin(`select count(*)::int as n from durable_runs where tenant_id = $1`, [tenantA]);
    expect(after.rows[0].n).toBe(before.rows[0].n);
  });

  it.each([
    ['no Authorization header', undefined],
    ['an empty bearer', 'Bearer '],
    ['Basic credentials', `Basic ${Buffer.from('admin:admin').toString('base64')}`],
    ['two tokens', 'Bearer a.b.c Bearer d.e.f'],
    ['garbage', 'Bearer ../../etc/passwd'],
  ])('%s → 401 problem+json, logged as a 401', async (_name, authorization) => {
    const res = await attempt(stack, 'GET', `/api/v1/golden-path/runs/${victim.runId}`, authorization);
    expect(res.status).toBe(401);
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expectNoVictimData(res.text);
    const lines = await logLinesFor(res.correlationId);
    expect(lines.some((l) => l.res?.statusCode === 401)).toBe(true);
  });
});

describe("a valid token of tenant A asking for tenant B's ids", () => {
  let tokenA: string;
  beforeAll(async () => {
    tokenA = await stack.token({ tenantId: tenantA, sub: 'mallory', roles: ['approver'] });
  });

  const reads: Array<[string, () => string]> = [
    ['run', () => `/api/v1/golden-path/runs/${victim.runId}`],
    ['waiting run', () => `/api/v1/golden-path/runs/${victim.pendingRunId}`],
    ['approval request', () => `/api/v1/approvals/${victim.approvalId}`],
    ['pending approval request', () => `/api/v1/approvals/${victim.pendingApprovalId}`],
    ['evidence pack', () => `/api/v1/evidence/${victim.evidenceId}`],
    ['evidence verification', () => `/api/v1/evidence/${victim.evidenceId}/verify`],
  ];
  for (const [name, path] of reads) {
    it(`reading B's ${name} → 404, no data, and the attempt is logged with A's tenant`, async () => {
      const res = await attempt(stack, 'GET', path(), `Bearer ${tokenA}`);
      expect(res.status).toBe(404);
      expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
      expectNoVictimData(res.text);
      const lines = await logLinesFor(res.correlationId);
      const line = lines.find((l) => l.res?.statusCode === 404);
      expect(line?.tenant_id).toBe(tenantA);
      expect(line?.req?.url).toBe(path());
    });
  }

  it("deciding B's pending approval → 404, and B's request stays pending with no decision", async () => {
    const res = await attempt(stack, 'POST', `/api/v1/approvals/${victim.pendingApprovalId}/decision`, `Bearer ${tokenA}`, { decision: 'approve' });
    expect(res.status).toBe(404);
    expectNoVictimData(res.text);
    const { rows } = await stack.db.admin(
      `select status, (select count(*)::int from approval_decisions d where d.approval_request_id = a.id) as decisions from approval_requests a where id = $1`,
      [victim.pendingApprovalId],
    );
    expect(rows[0]).toEqual({ status: 'pending', decisions: 0 });
    const lines = await logLinesFor(res.correlationId);
    expect(lines.some((l) => l.res?.statusCode === 404 && l.tenant_id === tenantA)).toBe(true);
  });

  it("a tenant_id in upper case is the same tenant, in lower case: A's upper-case token reads B's run as A does (404), and is logged as A", async () => {
    const upper = await hs256(claims({ tenant_id: tenantA.toUpperCase() }));
    const res = await attempt(stack, 'GET', `/api/v1/golden-path/runs/${victim.runId}`, `Bearer ${upper}`);
    expect(res.status).toBe(404);
    expectNoVictimData(res.text);
    const lines = await logLinesFor(res.correlationId);
    expect(lines.find((l) => l.res?.statusCode === 404)?.tenant_id).toBe(tenantA);
  });

  it("A's lists never show B's runs or approvals", async () => {
    const runs = await api(stack, 'GET', '/api/v1/golden-path/runs?limit=100', { token: tokenA });
    const approvals = await api(stack, 'GET', '/api/v1/approvals?limit=100', { token: tokenA });
    expect(runs.status).toBe(200);
    expect(approvals.status).toBe(200);
    expectNoVictimData(runs.text + approvals.text);
  });
});

describe('RS256 deployment (JWKS)', () => {
  let rs: TestStack;
  let jwksServer: Server;
  let keys: Awaited<ReturnType<typeof generateKeyPair>>;
  const rsTenant = newTenant();

  beforeAll(async () => {
    keys = await generateKeyPair('RS256', { extractable: true });
    const jwk = { ...(await exportJWK(keys.publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' };
    jwksServer = createServer((_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [jwk] })));
    await new Promise<void>((r) => jwksServer.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/jwks.json`;
    rs = await startStack({ env: { JWT_JWKS_URL: url } });
  });
  afterAll(async () => {
    await rs?.stop();
    await new Promise<void>((r) => (jwksServer ? jwksServer.close(() => r()) : r()));
  });

  const rsClaims = () => claims({ tenant_id: rsTenant });

  it('a token signed with the published key is accepted (the control case)', async () => {
    const token = await new SignJWT(rsClaims()).setProtectedHeader({ alg: 'RS256', kid: 'k1' }).sign(keys.privateKey);
    const res = await attempt(rs, 'GET', '/api/v1/golden-path/runs', `Bearer ${token}`);
    expect(res.status).toBe(200);
  });

  it('HS256 signed with the public key as the HMAC secret (key confusion) → 401', async () => {
    const pem = await exportSPKI(keys.publicKey);
    const jwkN = (await exportJWK(keys.publicKey)).n!;
    for (const key of [pem, jwkN]) {
      const token = await new SignJWT(rsClaims()).setProtectedHeader({ alg: 'HS256', kid: 'k1' }).sign(new TextEncoder().encode(key));
      expect((await attempt(rs, 'GET', '/api/v1/golden-path/runs', `Bearer ${token}`)).status).toBe(401);
    }
  });

  it('an HS256 development token is refused once JWKS verification is configured', async () => {
    const token = await rs.token({ tenantId: rsTenant, sub: 'dev' });
    expect((await attempt(rs, 'GET', '/api/v1/golden-path/runs', `Bearer ${token}`)).status).toBe(401);
  });

  it("a token signed by the attacker's key, pointing jku/x5u at the attacker's keys → 401", async () => {
    const attacker = await generateKeyPair('RS256');
    const token = await new SignJWT(rsClaims())
      .setProtectedHeader({ alg: 'RS256', kid: 'k1', jku: 'http://127.0.0.1:1/evil.json', x5u: 'http://127.0.0.1:1/evil.pem' })
      .sign(attacker.privateKey);
    expect((await attempt(rs, 'GET', '/api/v1/golden-path/runs', `Bearer ${token}`)).status).toBe(401);
  });

  it('alg none → 401', async () => {
    expect((await attempt(rs, 'GET', '/api/v1/golden-path/runs', `Bearer ${new UnsecuredJWT(rsClaims()).encode()}`)).status).toBe(401);
  });
});
