import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes, randomUUID } from 'node:crypto';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { api, newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { spawnApi, TELEMETRY_REGISTER, type ApiProcess } from '../helpers/api-process.ts';
import { startOtlpReceiver, type OtlpReceiver } from '../helpers/otlp-receiver.ts';
import { otelEnv } from '../helpers/traced-stack.ts';

/**
 * The API fetches the identity provider's keys (JWT_JWKS_URL) while it checks a request's token, inside
 * the request's trace. The undici instrumentation writes the active context into every outgoing fetch:
 * `traceparent` (the caller's trace) and `baggage` (the request's correlation id, a business identifier).
 * Neither is the identity provider's business. A real API process with the OTel bootstrap, a real HTTP
 * server as the JWKS endpoint recording what it receives.
 */
const SERVER = 2;
let receiver: OtlpReceiver;
let idp: Server;
let stack: TestStack;
let apiProc: ApiProcess;
let keys: Awaited<ReturnType<typeof generateKeyPair>>;
const received: IncomingHttpHeaders[] = [];
const tenant = newTenant();
const now = () => Math.floor(Date.now() / 1000);

beforeAll(async () => {
  keys = await generateKeyPair('RS256', { extractable: true });
  const jwk = { ...(await exportJWK(keys.publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' };
  idp = createServer((req, res) => {
    received.push(req.headers);
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [jwk] }));
  });
  await new Promise<void>((r) => idp.listen(0, '127.0.0.1', r));
  receiver = await startOtlpReceiver();
  stack = await startStack({ api: false, env: { ...otelEnv(receiver.url), JWT_JWKS_URL: `http://127.0.0.1:${(idp.address() as AddressInfo).port}/jwks.json` } });
  apiProc = await spawnApi(stack.env, ['--import', TELEMETRY_REGISTER]);
}, 120_000);

afterAll(async () => {
  await apiProc?.stop('SIGKILL');
  await stack?.stop();
  await receiver?.close();
  idp?.closeAllConnections();
  await new Promise<void>((r) => (idp ? idp.close(() => r()) : r()));
});

const sign = () =>
  new SignJWT({ tenant_id: tenant, roles: ['approver'], sub: 'alice', iss: stack.config.JWT_ISSUER, aud: stack.config.JWT_AUDIENCE, iat: now(), jti: randomUUID(), exp: now() + 600 })
    .setProtectedHeader({ alg: 'RS256', kid: 'k1' })
    .sign(keys.privateKey);

describe('the JWKS fetch', () => {
  it("carries neither the request's trace context nor its baggage (the correlation id) to the identity provider, while the request is traced", async () => {
    const cid = `jwks-${randomUUID()}`;
    const traceId = randomBytes(16).toString('hex');
    const before = received.length;
    const res = await api({ ...stack, baseUrl: apiProc.baseUrl }, 'GET', '/api/v1/golden-path/runs', {
      token: await sign(),
      headers: { 'X-Correlation-Id': cid, traceparent: `00-${traceId}-${randomBytes(8).toString('hex')}-01`, baggage: `caller.secret=${cid}` },
    });
    expect(res.status, res.text).toBe(200);
    // The keys were fetched for this request, inside its trace: its server span is in the caller's trace.
    expect(received.length).toBeGreaterThan(before);
    await waitFor(() => receiver.spans.some((s) => s.traceId === traceId && s.kind === SERVER), { timeoutMs: 30_000, what: "the request's server span in the caller's trace" });
    // And after the fetch the request is still traced, not left suppressed: its query of the runs (made once
    // the token is verified) is a span of its trace (the pg instrumentation records none under suppression).
    await waitFor(() => receiver.spans.some((s) => s.traceId === traceId && (s.attributes['db.system.name'] ?? s.attributes['db.system']) === 'postgresql' && String(s.attributes['db.statement']).includes('durable_runs')), {
      timeoutMs: 30_000,
      what: "the request's query of the runs in the caller's trace",
    });
    for (const headers of received) {
      expect(headers).not.toHaveProperty('traceparent');
      expect(headers).not.toHaveProperty('tracestate');
      expect(headers).not.toHaveProperty('baggage');
      expect(JSON.stringify(headers)).not.toContain(cid);
      expect(JSON.stringify(headers)).not.toContain(traceId);
    }
  });
});
