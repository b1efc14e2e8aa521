import { z } from 'zod';
import { defineRoute, type RouteDef } from '../../platform/http/route.ts';
import { ADMIN_ROLE } from './approval.constants.ts';
import { isoTime } from '../../platform/http/iso-time.ts';
import { appliedPolicy, approvalPolicyBody, loadPolicyWithSource, policyToBody, savePolicy } from './approval.policy.ts';

const PATH = '/api/v1/approval-policy';

const policyView = z
  .strictObject({
    source: z.enum(['default', 'tenant']).describe('default until an admin sets a policy'),
    policy: approvalPolicyBody,
    updated_at: isoTime.nullable(),
  })
  .meta({ id: 'ApprovalPolicyView' });

/**
 * The tenant's approval policy: thresholds of classes A and C and the SLAs of B and C. Absent a
 * tenant row, the platform defaults apply (cost 50,000 / 250,000, payback 6 / 24 months, SLAs from
 * APPROVAL_SLA_B / APPROVAL_SLA_C). A change applies to runs classified after it, never to waiting ones.
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
        const { policy, source, updatedAt } = await loadPolicyWithSource(em, principal.tenantId, defaults);
        return { status: 200, body: appliedPolicy(source, policyToBody(policy), updatedAt) };
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
        422: { description: 'Invalid policy (bounds, or A thresholds above C thresholds)' },
      },
      async handler({ em, principal, body }) {
        const updatedAt = await savePolicy(em, principal.tenantId, body);
        return { status: 200, body: appliedPolicy('tenant', body, updatedAt) };
      },
    }),
  ];
}
