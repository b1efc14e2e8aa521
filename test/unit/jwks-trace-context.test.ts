import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes, randomUUID } from 'node:crypto';
import { context, ROOT_CONTEXT, trace, TraceFlags, type Context } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { isTracingSuppressed } from '@opentelemetry/core';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { parseConfig } from '../../src/platform/config/config.ts';
import { createTokenVerifier } from '../../src/platform/tenancy/jwt.ts';
import { waitFor } from '../helpers/poll.ts';

/**
 * The JWKS fetch runs with tracing suppressed (jwt.ts, untraced), and only the fetch: the request that
 * started it, and every request that waits for the same fetch meanwhile (jose shares one pending fetch),
 * go on in their own trace, unsuppressed — else their database and Redis spans after the token check
 * would be dropped (the pg and ioredis instrumentations record nothing under a suppressed context).
 * In-process, with the context manager the SDK installs (AsyncLocalStorage).
 */
beforeAll(() => {
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
});
afterAll(() => {
  context.disable();
  vi.restoreAllMocks();
});

/** A request's context: a sampled remote span of its own trace as the active span. */
function requestContext(): { ctx: Context; traceId: string } {
  const traceId = randomBytes(16).toString('hex');
  return { traceId, ctx: trace.setSpanContext(ROOT_CONTEXT, { traceId, spanId: randomBytes(8).toString('hex'), traceFlags: TraceFlags.SAMPLED, isRemote: true }) };
}

/** What a request sees once its token is verified: its trace still active, tracing not suppressed. */
function afterVerify(verify: () => Promise<unknown>) {
  return async () => {
    await verify();
    return { traceId: trace.getSpanContext(context.active())?.traceId, suppressed: isTracingSuppressed(context.active()) };
  };
}

describe('the JWKS fetch suppresses tracing for the fetch alone', () => {
  it("a request that started the fetch and one that waited for it both go on in their own trace, unsuppressed; the fetch itself ran suppressed", async () => {
    const { publicKey, privateKey } = await generateKeyPair('RS256', { extractable: true });
    const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' };
    const held: (() => void)[] = [];
    let fetches = 0;
    const idp = createServer((_req, res) => {
      fetches++;
      held.push(() => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [jwk] })));
    });
    await new Promise<void>((r) => idp.listen(0, '127.0.0.1', r));
    const realFetch = globalThis.fetch;
    const fetchSuppressed: boolean[] = [];
    vi.spyOn(globalThis, 'fetch').mockImplementation((...args: Parameters<typeof fetch>) => {
      fetchSuppressed.push(isTracingSuppressed(context.active()));
      return realFetch(...args);
    });
    try {
      const cfg = parseConfig({ JWT_JWKS_URL: `http://127.0.0.1:${(idp.address() as AddressInfo).port}/jwks.json` });
      const verifier = createTokenVerifier(cfg);
      const now = Math.floor(Date.now() / 1000);
      const sign = () =>
        new SignJWT({ tenant_id: randomUUID(), sub: 'alice', iss: cfg.JWT_ISSUER, aud: cfg.JWT_AUDIENCE, iat: now, exp: now + 600 })
          .setProtectedHeader({ alg: 'RS256', kid: 'k1' })
          .sign(privateKey);
      const [tokenA, tokenB] = [await sign(), await sign()];
      const a = requestContext();
      const b = requestContext();
      const first = context.with(a.ctx, afterVerify(() => verifier.verify(tokenA)));
      await waitFor(() => held.length === 1, { what: 'the JWKS fetch to reach the identity provider' });
      // B arrives while A's fetch is held: no keys yet, so it waits for the pending one (no fetch of its own).
      const second = context.with(b.ctx, afterVerify(() => verifier.verify(tokenB)));
      // Answered once B's token check has reached the pending fetch (microtasks only, all run before this).
      await new Promise((r) => setImmediate(r));
      held.shift()!();
      expect(await first).toEqual({ traceId: a.traceId, suppressed: false });
      expect(await second).toEqual({ traceId: b.traceId, suppressed: false });
      expect(fetches).toBe(1);
      expect(fetchSuppressed).toEqual([true]);
      // Outside any request, nothing was left suppressed either.
      expect(isTracingSuppressed(context.active())).toBe(false);
    } finally {
      vi.restoreAllMocks();
      idp.closeAllConnections();
      await new Promise((r) => idp.close(r));
    }
  });
});
