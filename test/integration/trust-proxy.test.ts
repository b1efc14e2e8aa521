import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { networkInterfaces } from 'node:os';
import { createApp } from '../../src/app.ts';
import { parseConfig, type Config } from '../../src/platform/config/config.ts';
import { ADMIN_COOKIE, ADMIN_HOST_COOKIE, OPERATOR_ROLE } from '../../src/platform/http/admin-auth.middleware.ts';
import { newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { postSignIn } from '../helpers/dashboard-sign-in.ts';

/**
 * Behind a load balancer that terminates TLS (Heroku's router, an ALB), the API sees plain HTTP from
 * the balancer's address: only TRUST_PROXY makes it believe X-Forwarded-Proto, so that the operator
 * cookie — a cross-tenant session — is the `Secure` `__Host-` one; not believed, a browser on another
 * host gets no session over what is plain HTTP to the API.
 */

/** An address of this machine that is not loopback: a peer connecting to it is not `loopback` to Express. */
const external = Object.values(networkInterfaces())
  .flat()
  .find((i) => i && i.family === 'IPv4' && !i.internal)?.address;

let stack: TestStack;
const servers: Server[] = [];

beforeAll(async () => {
  stack = await startStack();
});
afterAll(async () => {
  for (const s of servers) await new Promise((r) => s.close(r));
  await stack?.stop();
});

/** The API with TRUST_PROXY set as given (unset: the default), listening on `host`. */
async function apiWith(trustProxy: string | undefined, host: string): Promise<string> {
  const config: Config = parseConfig({ ...stack.env, TRUST_PROXY: trustProxy });
  const server = await new Promise<Server>((resolve) => {
    const s = createApp({ ...stack.container, config }).listen(0, host, () => resolve(s));
  });
  servers.push(server);
  return `http://${host}:${(server.address() as AddressInfo).port}`;
}

/** A one-time `?token=` link's sign-in (a new token each: a link works once) to the dashboard through a TLS-terminating proxy. */
const signInVia = async (base: string) =>
  postSignIn(base, await stack.token({ tenantId: newTenant(), sub: 'operator-1', roles: [OPERATOR_ROLE] }), { headers: { 'x-forwarded-proto': 'https', 'sec-fetch-site': 'same-origin' } });

/** The session cookie such a sign-in sets. */
async function cookieVia(base: string): Promise<string> {
  const res = await signInVia(base);
  expect(res.status).toBe(303);
  const cookie = res.setCookie ?? '';
  expect(cookie).toContain(`${ADMIN_COOKIE}=`);
  return cookie;
}

describe('TRUST_PROXY decides whose X-Forwarded-Proto the API believes', () => {
  it('parses true, false, a hop count and address lists, and refuses anything else', () => {
    const parse = (v: string | undefined) => parseConfig({ ...stack.env, TRUST_PROXY: v }).TRUST_PROXY;
    expect([parse(undefined), parse('true'), parse('false'), parse('1'), parse('loopback, 10.0.0.0/8')]).toEqual(['loopback', true, false, 1, 'loopback, 10.0.0.0/8']);
    expect(() => parse('1; drop')).toThrow(/TRUST_PROXY/);
  });

  it('by default only a proxy on the same host is believed', async () => {
    // Believed: HTTPS, so the `__Host-` cookie (ADR 0017, amendment *one cookie per host*).
    expect(await cookieVia(await apiWith(undefined, '127.0.0.1'))).toMatch(new RegExp(`^${ADMIN_HOST_COOKIE}=[^;]+; Path=/; .*; Secure(,|$)`));
    // Not believed: plain HTTP to 127.0.0.1 (local development), the plain cookie without Secure.
    expect(await cookieVia(await apiWith('false', '127.0.0.1'))).not.toMatch(/Secure|__Host-/);
  });

  it("the sign-in's Origin check (a browser without Sec-Fetch-Site) takes the scheme and host a believed proxy forwards", async () => {
    const signIn = async (base: string, headers: Record<string, string>) =>
      (await postSignIn(base, await stack.token({ tenantId: newTenant(), sub: 'operator-1', roles: [OPERATOR_ROLE] }), { headers })).status;
    const behind = { 'x-forwarded-proto': 'https', 'x-forwarded-host': 'ops.example' };
    const trusting = await apiWith(undefined, '127.0.0.1');
    // The page the browser saw was https://ops.example's; the proxy says so, and is believed.
    expect(await signIn(trusting, { ...behind, origin: 'https://ops.example' })).toBe(303);
    expect(await signIn(trusting, { ...behind, origin: 'http://ops.example' })).toBe(403);
    // Not believed: the request is plain HTTP to 127.0.0.1, which https://ops.example is not.
    expect(await signIn(await apiWith('false', '127.0.0.1'), { ...behind, origin: 'https://ops.example' })).toBe(403);
  });

  it.skipIf(!external)('a load balancer on another host is believed with TRUST_PROXY=1, not by default', async () => {
    // The connection arrives from this machine's external address, as a balancer's would from its own.
    // Not believed, the request is plain HTTP to a host that is not loopback: no session is opened
    // (a cookie without Secure, which a sibling subdomain could shadow), rather than a weaker one.
    const refused = await signInVia(await apiWith(undefined, external!));
    expect(refused.status).toBe(403);
    expect(refused.setCookie).toBeNull();
    expect(refused.text).toContain('TRUST_PROXY');
    expect(await cookieVia(await apiWith('1', external!))).toMatch(new RegExp(`^${ADMIN_HOST_COOKIE}=[^;]+; Path=/; .*; Secure(,|$)`));
  });
});
