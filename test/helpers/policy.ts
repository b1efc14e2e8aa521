import { api, newTenant, type TestStack } from './stack.ts';

/** PUT /api/v1/approval-policy as `token`, with an Idempotency-Key when `key` is given. */
export function putPolicy(stack: TestStack, token: string, body: unknown, key?: string) {
  return api(stack, 'PUT', '/api/v1/approval-policy', { token, body, ...(key === undefined ? {} : { headers: { 'Idempotency-Key': key } }) });
}

/**
 * Sets a tenant's approval policy as its admins do (ADR 0010): `admin-1` PUTs it; a change that
 * loosens the policy (202, a pending change) is then approved by a second admin, `admin-2`. Answers
 * the approval policy then in force, as the PUT (200) or the approval answers it.
 */
export async function setPolicy(stack: TestStack, tenantId: string, body: unknown): Promise<{ status: number; text: string; json: any }> {
  const admin = await stack.token({ tenantId, sub: 'admin-1', roles: ['admin'] });
  const put = await putPolicy(stack, admin, body);
  if (put.status !== 202) return put;
  const second = await stack.token({ tenantId, sub: 'admin-2', roles: ['admin'] });
  return api(stack, 'POST', `/api/v1/approval-policy/changes/${put.json.id}/approve`, { token: second });
}

/** A new tenant with the users the policy tests act as: two admins, a submitter and an approver. */
export async function policyTenant(stack: TestStack) {
  const tenant = newTenant();
  return {
    tenant,
    admin: await stack.token({ tenantId: tenant, sub: 'admin-1', roles: ['admin'] }),
    admin2: await stack.token({ tenantId: tenant, sub: 'admin-2', roles: ['admin'] }),
    submitter: await stack.token({ tenantId: tenant, sub: 'submitter-1' }),
    approver: await stack.token({ tenantId: tenant, sub: 'approver-1', roles: ['approver'] }),
  };
}
export type PolicyTenant = Awaited<ReturnType<typeof policyTenant>>;
