import { z } from 'zod';
import { defineRoute, type RouteDef } from '../../platform/http/route.ts';
import { ADMIN_ROLE } from '../../platform/tenancy/roles.ts';
import { isoTime } from '../../platform/http/iso-time.ts';
import { appliedPolicy, approvalPolicyBody, approvalPolicySettings, loadPolicyWithSource, policyToBody, savePolicy } from './approval.policy.ts';

const PATH = '/api/v1/approval-policy';

const policyView = z
  .strictObject({
    source: z.enum(['default', 'tenant']).describe('default until an admin sets a policy'),
    policy: approvalPolicySettings,
    updated_at: isoTime.nullable(),
    updated_by: z.string().nullable().describe('The admin (token sub) whose PUT set the policy; null for the defaults'),
  })
  .meta({ id: 'ApprovalPolicyView' });

/**
 * The tenant's approval policy: thresholds of classes A and C, the currency of the cost thresholds
 * (a run in another currency is class C) and the SLAs of B and C. Absent a tenant row, the platform
 * defaults apply (cost 50,000 / 250,000 SAR, payback 6 / 24 months, SLAs from APPROVAL_SLA_B /
 * APPROVAL_SLA_C). A change applies to runs classified after it, never to waiting ones.
 */
export function approvalPolicyRoutes(deps: { slaBSeconds: number; slaCSeconds: number }): RouteDef[] {
  const defaults = { slaBSeconds: deps.slaBSeconds, slaCSeconds: deps.slaCSeconds };
  return [
    defineRoute({
      method: 'get',
      path: PATH,
      summary: "The tenant's approval policy (the defaults when none was set)",
      tags: ['approvals'],
      responses: { 200: { description: 'The policy in force', schema: policyView } },
      async handler({ em, principal }) {
        const { policy, source, updatedAt, updatedBy } = await loadPolicyWithSource(em, principal.tenantId, defaults);
        return { status: 200, body: appliedPolicy(source, policyToBody(policy), updatedAt, updatedBy) };
      },
    }),
    defineRoute({
      method: 'put',
      path: PATH,
      summary: "Replace the tenant's approval policy (role admin)",
      tags: ['approvals'],
      roles: [ADMIN_ROLE],
      idempotency: 'optional',
      body: approvalPolicyBody,
      responses: {
        200: { description: 'The policy now in force', schema: policyView },
        403: { description: 'Not an admin of the tenant' },
        422: { description: 'Invalid policy (bounds, A thresholds above C thresholds, or a currency that is no ISO 4217 code)' },
      },
      async handler({ em, principal, body }) {
        const updatedAt = await savePolicy(em, principal.tenantId, body, principal.sub);
        return { status: 200, body: appliedPolicy('tenant', body, updatedAt, principal.sub) };
      },
    }),
  ];
}
