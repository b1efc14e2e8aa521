import { z } from 'zod';
import { defineRoute, type RouteDef } from '../../platform/http/route.ts';
import { ADMIN_ROLE } from '../../platform/tenancy/roles.ts';
import { isoTime } from '../../platform/http/iso-time.ts';
import { pageLimit } from '../../platform/http/cursor.ts';
import { POLICY_CHANGE_STATUSES } from './approval.entities.ts';
import { appliedPolicy, approvalPolicyBody, loadPolicyWithSource, policyFromBody, policyInForceSettings } from './approval.policy.ts';
import {
  approveChange,
  CHANGES_PATH,
  getChange,
  listChanges,
  MAX_PENDING_CHANGES,
  policyChangePage,
  policyChangeView,
  POLICY_PATH,
  rejectChange,
  replacePolicy,
  type PolicyChangeView,
} from './approval-policy.changes.ts';

const policyView = z
  .strictObject({
    source: z.enum(['default', 'tenant']).describe('default until an admin sets a policy'),
    policy: policyInForceSettings,
    version: z.number().int().min(0).describe('0 for the defaults; 1 for the tenant\'s first policy, one more for each change applied'),
    updated_at: isoTime.nullable(),
    updated_by: z.string().nullable().describe('The admin (token sub) whose PUT set the policy, or proposed the change a second admin approved; null for the defaults'),
    approved_by: z
      .string()
      .nullable()
      .describe('The second admin (token sub) who approved the change, which loosened the policy (four-eyes); null when it applied at once (it only tightened), and for the defaults'),
  })
  .meta({ id: 'ApprovalPolicyView' });
type PolicyView = z.infer<typeof policyView>;

const changeId = z.object({ id: z.string().uuid() });
const decisionErrors = {
  404: { description: 'No such change for this tenant' },
  409: {
    description:
      'The change is no longer pending: the policy changed since it was proposed, or, based on the defaults, the configured defaults are no longer its base_policy (policy_changed; a reject accepts the latter), it expired (policy_change_expired), or it was approved or rejected (policy_change_decided)',
  },
};

/**
 * The tenant's approval policy: thresholds of classes A and C, the currency of the cost thresholds
 * (a run in another currency is class C) and the SLAs of B and C. Absent a tenant row, the platform
 * defaults apply (cost 50,000 / 250,000 SAR, payback 6 / 24 months, SLAs from APPROVAL_SLA_B /
 * APPROVAL_SLA_C). A change applies to runs classified after it, never to waiting ones. A change that
 * loosens the policy needs a second admin (ADR 0010): it is proposed, and applies once approved.
 */
export function approvalPolicyRoutes(deps: { slaBSeconds: number; slaCSeconds: number; changeTtlMs: number }): RouteDef[] {
  const defaults = { slaBSeconds: deps.slaBSeconds, slaCSeconds: deps.slaCSeconds };
  return [
    defineRoute({
      method: 'get',
      path: POLICY_PATH,
      summary: "The tenant's approval policy (the defaults when none was set)",
      tags: ['approvals'],
      responses: { 200: { description: 'The policy in force', schema: policyView } },
      async handler({ em, principal }) {
        return { status: 200, body: appliedPolicy(await loadPolicyWithSource(em, principal.tenantId, defaults)) };
      },
    }),
    defineRoute<z.infer<typeof approvalPolicyBody>, Record<string, never>, Record<string, never>, PolicyView | PolicyChangeView>({
      method: 'put',
      path: POLICY_PATH,
      summary: "Replace the tenant's approval policy (role admin): at once if it only tightens, else proposed for a second admin's approval",
      tags: ['approvals'],
      roles: [ADMIN_ROLE],
      idempotency: 'optional',
      body: approvalPolicyBody,
      responses: {
        200: { description: 'It only tightens (or keeps) the policy: the policy now in force', schema: policyView },
        202: { description: 'It loosens the policy: a pending change, which applies once a second admin approves it', schema: policyChangeView, location: true },
        403: { description: 'Not an admin of the tenant' },
        409: {
          description: `It loosens the policy, and the tenant already has ${MAX_PENDING_CHANGES} pending changes, the most it may have (too_many_pending_changes; pending, limit): nothing is stored`,
        },
        422: {
          description:
            "Invalid policy (bounds, A thresholds above C thresholds, a cost threshold finer than the ISO 4217 minor unit of the policy's currency — the one it sets — or a currency that is no ISO 4217 code): nothing is stored or proposed",
        },
      },
      async handler({ em, principal, body }) {
        const out = await replacePolicy(em, principal, body, { defaults, changeTtlMs: deps.changeTtlMs });
        if ('change' in out) return { status: 202, body: out.change, headers: { Location: out.change.links.self } };
        return { status: 200, body: appliedPolicy(out.applied) };
      },
    }),
    defineRoute({
      method: 'get',
      path: CHANGES_PATH,
      summary: "The tenant's proposed policy changes, newest first, with cursor pagination",
      tags: ['approvals'],
      query: z.strictObject({
        status: z.enum(POLICY_CHANGE_STATUSES).optional().describe('By the status a change reads (pending: awaiting a second admin)'),
        limit: pageLimit(50),
        cursor: z.string().max(200).optional(),
      }),
      responses: { 200: { description: 'A page of policy changes', schema: policyChangePage } },
      async handler({ em, principal, query }) {
        return { status: 200, body: await listChanges(em, principal.tenantId, query, defaults) };
      },
    }),
    defineRoute({
      method: 'get',
      path: `${CHANGES_PATH}/:id`,
      summary: 'One proposed policy change',
      tags: ['approvals'],
      params: changeId,
      responses: { 200: { description: 'The change', schema: policyChangeView }, 404: { description: 'No such change for this tenant' } },
      async handler({ em, principal, params }) {
        return { status: 200, body: await getChange(em, principal.tenantId, params.id, defaults) };
      },
    }),
    defineRoute({
      method: 'post',
      path: `${CHANGES_PATH}/:id/approve`,
      summary: 'Approve a proposed policy change (role admin; never its proposer): it applies now',
      tags: ['approvals'],
      roles: [ADMIN_ROLE],
      idempotency: 'optional',
      params: changeId,
      responses: {
        200: { description: 'The policy now in force: the change, approved_by this admin', schema: policyView },
        403: { description: 'Not an admin of the tenant, or the proposer of the change' },
        ...decisionErrors,
        422: {
          description:
            "The change was proposed before cost thresholds were held to the minor unit of the policy's currency, and one is finer (validation_failed naming policy.<field>): nothing applies, the change stays pending (reject it, propose the policy to the unit)",
        },
      },
      async handler({ em, principal, params }) {
        const applied = await approveChange(em, principal, params.id, defaults);
        const view = appliedPolicy({
          policy: policyFromBody(applied.policy),
          source: 'tenant',
          version: applied.version,
          updatedAt: applied.updatedAt,
          updatedBy: applied.proposedBy,
          approvedBy: principal.sub,
        });
        return { status: 200, body: view };
      },
    }),
    defineRoute({
      method: 'post',
      path: `${CHANGES_PATH}/:id/reject`,
      summary: 'Reject a proposed policy change (role admin; its proposer may, to withdraw it)',
      tags: ['approvals'],
      roles: [ADMIN_ROLE],
      idempotency: 'optional',
      params: changeId,
      responses: {
        200: {
          description:
            'The change, rejected: a pending one, or one based on the defaults that reads superseded only because the configured defaults differ from its base_policy (it would read pending again once they are restored)',
          schema: policyChangeView,
        },
        403: { description: 'Not an admin of the tenant' },
        ...decisionErrors,
      },
      async handler({ em, principal, params }) {
        return { status: 200, body: await rejectChange(em, principal, params.id, defaults) };
      },
    }),
  ];
}
