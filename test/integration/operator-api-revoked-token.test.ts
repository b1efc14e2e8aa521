import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { OPERATOR_ROLE } from '../../src/platform/http/admin-auth.middleware.ts';
import { api, newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { postSignIn } from '../helpers/dashboard-sign-in.ts';
import { capturedLog } from '../helpers/log-capture.ts';
import { waitFor } from '../helpers/poll.ts';

/**
 * An operator token the dashboard refuses — signed out (`POST /admin/queues/logout`), or handed out as
 * a `?token=` link and exchanged for a session (ADR 0017: "the exchanged token signs nothing in
 * afterwards, on any channel") — is refused by the operator's other routes too: the operator API
 * (`/api/v1/operator/…`), which writes any tenant's limits. Otherwise the leaked link (a browser's
 * history, a proxy's log, a chat preview) or the token its operator signed out still sets a victim
 * tenant's `max_runs_in_flight` to 1 until its `exp`. The refusal is a 401 problem+json, nothing stored.
 */
let stack: TestStack;
const log = capturedLog();

beforeAll(async () => {
  stack = await startStack({ env: { MAX_RUNS_IN_FLIGHT_PER_TENANT: '10', LOG_LEVEL: 'warn' }, logDestination: log.destination });
});
afterAll(async () => stack?.stop());

const limitsPath = (tenant: string) => `/api/v1/operator/tenants/${tenant}/limits`;
const operatorToken = (sub: string) => stack.token({ tenantId: newTenant(), sub, roles: [OPERATOR_ROLE] });

async function storedRow(tenant: string) {
  const { rows } = await stack.db.admin(`select max_runs_in_flight from tenant_limits where tenant_id = $1`, [tenant]);
  return rows[0];
}

async function putLimits(token: string, tenant: string) {
  return api(stack, 'PUT', limitsPath(tenant), { token, body: { max_active_runs: null, max_runs_in_flight: 1 }, headers: { 'Idempotency-Key': randomUUID() } });
}

function expectRefused(res: Awaited<ReturnType<typeof api>>) {
  expect(res.status, res.text).toBe(401);
  expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  expect(res.json).toMatchObject({ status: 401, code: 'unauthorized' });
}

describe('operator API with a token the dashboard refuses', () => {
  it('the control: a fresh operator token reads and writes limits', async () => {
    const token = await operatorToken('ops-control');
    const victim = newTenant();
    expect((await api(stack, 'GET', limitsPath(victim), { token })).status).toBe(200);
    expect((await putLimits(token, victim)).status).toBe(200);
    expect(await storedRow(victim)).toEqual({ max_runs_in_flight: 1 });
  });

  it('a signed-out token: 401 on the operator API, read and write, nothing stored', async () => {
    const token = await operatorToken('ops-signed-out');
    expect((await api(stack, 'GET', limitsPath(newTenant()), { token })).status).toBe(200);
    const out = await fetch(`${stack.baseUrl}/admin/queues/logout`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
    expect(out.status).toBe(200);
    expect((await api(stack, 'GET', '/admin/queues/api/queues', { token })).status).toBe(401); // the dashboard refuses it

    const victim = newTenant();
    expectRefused(await api(stack, 'GET', limitsPath(victim), { token }));
    expectRefused(await putLimits(token, victim));
    expectRefused(await api(stack, 'GET', '/api/v1/operator/tenant-limits', { token }));
    expect(await storedRow(victim)).toBeUndefined();
    await securityEvent('token_revoked', 'ops-signed-out', limitsPath(victim));
  });

  it("a ?token= link's token, once exchanged for a dashboard session: 401 on the operator API, nothing stored", async () => {
    const token = await operatorToken('ops-link');
    const signIn = await postSignIn(stack.baseUrl, token);
    expect(signIn.status, signIn.text).toBe(303);
    expect((await api(stack, 'GET', '/admin/queues/api/queues', { token })).status).toBe(401); // the dashboard refuses it

    const victim = newTenant();
    expectRefused(await putLimits(token, victim));
    expect(await storedRow(victim)).toBeUndefined();
    expect(await securityEvent('token_link_reused', 'ops-link', limitsPath(victim))).toMatchObject({ channel: 'bearer' });
  });
});

/** The refusal's log line: a security event as the dashboard's, naming the subject and the API path (it may trail the answer). */
function securityEvent(event: string, sub: string, path: string) {
  return waitFor(() => log.lines.find((l) => l.security_event === event && l.sub === sub && l.path === path), { what: `the ${event} log line of ${sub}` });
}
