import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { networkInterfaces } from 'node:os';
import { createApp } from '../../src/app.ts';
import { api, startStack, type TestStack } from '../helpers/stack.ts';
import { postSignIn, sessionCookieOf } from '../helpers/dashboard-sign-in.ts';

/**
 * The operator's HTTP Basic login to the dashboard (which spans tenants) is throttled per client
 * address: after OPERATOR_LOGIN_MAX_FAILURES failures in the window, the address gets 429 whatever it
 * sends, so the password cannot be guessed at the speed of the network. Counted in Redis: every API
 * process shares the count.
 */
const OPERATOR = { user: 'operator', password: 'operator-password-1' };
const MAX_FAILURES = 3;
const basic = (user: string, password: string) => ({ authorization: `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}` });
const external = Object.values(networkInterfaces())
  .flat()
  .find((i) => i && i.family === 'IPv4' && !i.internal)?.address;

let stack: TestStack;
let other: Server | undefined;

beforeAll(async () => {
  stack = await startStack({ env: { OPERATOR_USER: OPERATOR.user, OPERATOR_PASSWORD: OPERATOR.password, OPERATOR_LOGIN_MAX_FAILURES: String(MAX_FAILURES) } });
});
afterAll(async () => {
  if (other) await new Promise((r) => other!.close(r));
  await stack?.stop();
});

describe('operator login throttling', () => {
  it('after the allowed failures an address gets 429 with Retry-After, even with the right password; tokens still work', async () => {
    expect((await api(stack, 'GET', '/admin/queues', { headers: basic(OPERATOR.user, OPERATOR.password) })).status).toBe(200);
    for (let i = 0; i < MAX_FAILURES; i++) {
      expect((await api(stack, 'GET', '/admin/queues', { headers: basic(OPERATOR.user, `guess-${i}-password`) })).status).toBe(401);
    }
    const refused = await api(stack, 'GET', '/admin/queues', { headers: basic(OPERATOR.user, OPERATOR.password) });
    expect(refused.status).toBe(429);
    expect(refused.headers.get('content-type')).toContain('application/problem+json');
    const retryAfter = Number(refused.headers.get('retry-after'));
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    expect(retryAfter).toBeLessThanOrEqual(15 * 60);
    expect(refused.json).toMatchObject({ status: 429, code: 'rate_limited' });
    // A wrong guess while refused is not even checked.
    expect((await api(stack, 'GET', '/admin/queues', { headers: basic(OPERATOR.user, 'another-guess-1') })).status).toBe(429);
    // The count lives in Redis under the deployment's prefix, so every API process sees it.
    expect(await stack.redis.keys(`${stack.prefix}:operator-login:*`)).toHaveLength(1);
    // Operators with a platform token are not locked out by someone guessing the password.
    const token = await stack.token({ tenantId: '00000000-0000-4000-8000-000000000001', sub: 'operator-2', roles: ['platform-operator'] });
    expect((await api(stack, 'GET', '/admin/queues', { token })).status).toBe(200);
  });

  it.skipIf(!external)('another address is not affected by one address\'s failures', async () => {
    // Runs after the test above has locked out loopback.
    expect((await api(stack, 'GET', '/admin/queues', { headers: basic(OPERATOR.user, OPERATOR.password) })).status).toBe(429);
    other = await new Promise<Server>((resolve) => {
      const s = createApp(stack.container).listen(0, external!, () => resolve(s));
    });
    const res = await fetch(`http://${external}:${(other.address() as AddressInfo).port}/admin/queues`, { headers: basic(OPERATOR.user, OPERATOR.password) });
    expect(res.status).toBe(200);
  });
});

describe("the dashboard's token cookie", () => {
  it('a cookie that is not valid percent-encoding is no credential: 401 problem+json, not a 500', async () => {
    // Any client can send any Cookie header: what it holds must be refused as a bad credential.
    for (const value of ['%E0%A4%A', '%', 'abc.def.%FF']) {
      const res = await api(stack, 'GET', '/admin/queues', { headers: { cookie: `dealix_admin_token=${value}` } });
      expect(res.status, `${value}: ${res.text}`).toBe(401);
      expect(res.headers.get('content-type')).toContain('application/problem+json');
      expect(res.headers.get('www-authenticate')).toMatch(/^Bearer/);
    }
    // The cookie a `?token=` link set still signs in, among other cookies.
    const token = await stack.token({ tenantId: '00000000-0000-4000-8000-000000000001', sub: 'operator-3', roles: ['platform-operator'] });
    const link = await postSignIn(stack.baseUrl, token);
    expect(link.status).toBe(303);
    const session = sessionCookieOf(link.setCookie);
    expect((await api(stack, 'GET', '/admin/queues', { headers: { cookie: `other=1; ${session}` } })).status).toBe(200);
  });
});
