import { randomUUID } from 'node:crypto';
import type { Config } from '../platform/config/config.ts';
import { signDevToken } from '../platform/tenancy/jwt.ts';
import { OPERATOR_ROLE } from '../platform/http/admin-auth.middleware.ts';
import { ADMIN_ROLE } from '../platform/tenancy/roles.ts';
import { DemoError, fmt, say, until } from './demo-support.ts';
import type { DemoWebhookReceiver, ReceivedWebhook } from './webhook-receiver.ts';

/** The example submission of the issue and the docs: class B under the default policy (cost 65,000, payback 2.48 months). */
export const DEMO_SUBMISSION = {
  partner: { name: 'Acme Trading', country: 'SA', sector: 'logistics', website: 'https://acme.example', registration_number: '1010101010' },
  economics: { expected_deals_per_year: 12, average_deal_value: 250000, win_rate: 0.3, gross_margin: 0.35, onboarding_cost: 40000, enablement_cost: 15000, annual_support_cost: 10000 },
  currency: 'SAR',
};
const STEP_TIMEOUT_MS = 60_000;
/** What the demo's endpoint subscribes to: the events its class B run sends (docs/api.md, *Events*). */
const DEMO_EVENTS = ['approval.requested', 'approval.decided', 'run.completed'];

interface Reply {
  status: number;
  json: any;
}

/** A small HTTP client over the API: mutating calls carry a fresh Idempotency-Key. */
function client(base: string) {
  return async (method: string, path: string, token: string, body?: unknown): Promise<Reply> => {
    const headers: Record<string, string> = { authorization: `Bearer ${token}` };
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      headers['idempotency-key'] = randomUUID();
    }
    const res = await fetch(`${base}${path}`, { method, headers, signal: AbortSignal.timeout(15_000), ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
    const text = await res.text();
    let json: any;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = { raw: text.slice(0, 500) };
    }
    return { status: res.status, json };
  };
}

function expectStatus(res: Reply, status: number, what: string): any {
  if (res.status !== status) throw new DemoError(`${what}: expected HTTP ${status}, got ${res.status}: ${JSON.stringify(res.json)}`);
  return res.json;
}

function describeStep(step: any): string {
  const o = step.output ?? {};
  switch (step.name) {
    case 'partner-dossier':
      return `completeness ${o.facts?.completeness_score}, risk flags: ${o.facts?.risk_flags?.length ? o.facts.risk_flags.join(', ') : 'none'}`;
    case 'economics-model':
      return `upside ${fmt(o.revenue_upside)} ${o.currency}, gross profit ${fmt(o.gross_profit)}, cost ${fmt(o.cost)}, payback ${o.payback_months ?? 'never'} months`;
    case 'approval-packet':
      return step.status === 'waiting'
        ? `class ${o.approval_class} (${o.reasons?.join('; ')}): waiting for ${o.required_approvals} approver(s), SLA until ${o.sla_deadline}`
        : `class ${o.approval_class}: ${o.outcome}${o.decisions?.length ? ` by ${o.decisions.map((d: any) => d.decided_by).join(', ')}` : ''}`;
    case 'evidence-pack':
      return `outcome ${o.outcome}, sha256 ${o.sha256}`;
    default:
      return step.status;
  }
}

/** One line per webhook: its type, its id (what receivers deduplicate by), and what it says. */
export function describeWebhook(w: ReceivedWebhook): string {
  const d = w.data;
  const what =
    w.type === 'approval.requested'
      ? `class ${d.approval_class}, ${d.required_approvals} approver(s)`
      : w.type === 'approval.decided'
        ? `${d.decision} by ${d.approver}: ${d.status} (${d.approvals}/${d.required_approvals})`
        : `run ${d.status}${d.evidence_pack_id ? ', with its evidence pack' : ''}`;
  return `webhook  ${w.type.padEnd(18)}  signature verified  webhook-id ${w.id}  ${what}`;
}

export interface GoldenPathDemoOptions {
  config: Config;
  base: string;
  secretGenerated: boolean;
  keepRunning: boolean;
  /** Receives the tenant's webhooks (registered as its endpoint in step 4). */
  receiver: DemoWebhookReceiver;
  /** Throws when a child process died or a webhook did not verify (checked on every poll). */
  guard: () => void;
  /**
   * Given, once the endpoint is registered, what deletes it (with its deliveries): the demo calls it
   * when it ends, so that nothing is left to deliver to a receiver that has stopped.
   */
  onEndpoint: (remove: () => Promise<string>) => void;
}

/**
 * Steps 4–8 of the demo: register the webhook receiver, submit a class B run, follow it, approve it as
 * a second user, verify the evidence, point at Bull Board. Each webhook the run sends must arrive,
 * verified, within the step deadline.
 */
export async function runGoldenPathDemo(o: GoldenPathDemoOptions): Promise<void> {
  const http = client(o.base);
  const tenant = randomUUID();
  const tenantAdmin = await signDevToken(o.config, { tenantId: tenant, sub: 'demo-admin', roles: [ADMIN_ROLE] });
  const submitter = await signDevToken(o.config, { tenantId: tenant, sub: 'demo-submitter' });
  const approver = await signDevToken(o.config, { tenantId: tenant, sub: 'demo-approver', roles: ['approver'] });
  const printed = new Set<string>();
  const follow = (runId: string, statuses: string[]) =>
    until(
      `run ${runId} to reach ${statuses.join(' or ')}`,
      STEP_TIMEOUT_MS,
      async () => {
        const run = expectStatus(await http('GET', `/api/v1/golden-path/runs/${runId}`, submitter), 200, 'reading the run');
        for (const s of run.steps) {
          const key = `${s.sequence_num}:${s.status}`;
          if ((s.status === 'completed' || s.status === 'waiting') && !printed.has(key)) {
            printed.add(key);
            say(`      ${s.status === 'completed' ? 'done' : 'wait'}  ${s.sequence_num} ${s.name.padEnd(16)} ${describeStep(s)}`);
          }
        }
        if (run.status !== 'waiting' && !statuses.includes(run.status) && !['pending', 'running'].includes(run.status)) {
          throw new DemoError(`the run ended ${run.status}: ${JSON.stringify(run.error)}`);
        }
        return statuses.includes(run.status) ? run : undefined;
      },
      o.guard,
    );

  /** Waits for the run's webhook of `type`, verified by the receiver, and prints it. */
  const webhook = async (type: string, runId: string): Promise<ReceivedWebhook> => {
    const got = await until(`the ${type} webhook of run ${runId}`, STEP_TIMEOUT_MS, async () => o.receiver.find(type, runId), o.guard);
    say(`      ${describeWebhook(got)}`);
    return got;
  };

  say(`[4/8] Registering a webhook endpoint as demo-admin (role ${ADMIN_ROLE}, tenant ${tenant})`);
  say(`      receiver  ${o.receiver.url}  (node:http in this process; verifies with standardwebhooks)`);
  const endpoint = expectStatus(await http('POST', '/api/v1/webhook-endpoints', tenantAdmin, { url: o.receiver.url, events: DEMO_EVENTS, description: 'npm run demo' }), 201, 'registering the webhook endpoint');
  o.receiver.useSecret(endpoint.secret);
  o.onEndpoint(async () => {
    const res = await http('DELETE', `/api/v1/webhook-endpoints/${endpoint.id}`, tenantAdmin);
    if (res.status !== 204 && res.status !== 404) expectStatus(res, 204, 'deleting the demo\'s webhook endpoint');
    return endpoint.id as string;
  });
  say(`      201 Created: endpoint ${endpoint.id} for ${endpoint.events.join(', ')}`);
  say('      its signing secret (whsec_…) is in this answer only: the receiver verifies every webhook with it');

  say('[5/8] Submitting a class B partner verification as demo-submitter');
  const started = Date.now();
  const accepted = expectStatus(await http('POST', '/api/v1/golden-path/run', submitter, DEMO_SUBMISSION), 202, 'submitting the run');
  say(`      202 Accepted: run ${accepted.run_id}, correlation id ${accepted.correlation_id}`);
  const waiting = await follow(accepted.run_id, ['waiting']);
  const approvalId = waiting.steps[2].output.approval_request_id as string;
  const requested = await webhook('approval.requested', accepted.run_id);
  if (requested.data.approval_request_id !== approvalId) throw new DemoError(`the approval.requested webhook names approval request ${requested.data.approval_request_id}, the run ${approvalId}`);

  say('[6/8] Approving as a second user, demo-approver (role approver)');
  const pending = expectStatus(await http('GET', '/api/v1/approvals?status=pending', approver), 200, 'listing pending approvals');
  if (!pending.items.some((a: any) => a.approval_request_id === approvalId)) throw new DemoError("the run's approval request is not in the pending list");
  const decision = expectStatus(await http('POST', `/api/v1/approvals/${approvalId}/decision`, approver, { decision: 'approve', comment: 'demo: economics reviewed' }), 200, 'approving');
  say(`      decision recorded: ${decision.status} (${decision.approvals}/${decision.required_approvals} approvals)`);
  const decided = await webhook('approval.decided', accepted.run_id);
  if (decided.data.approval_request_id !== approvalId || decided.data.approver !== 'demo-approver' || decided.data.status !== decision.status) {
    throw new DemoError(`the approval.decided webhook says ${decided.data.approver} → ${decided.data.status} on ${decided.data.approval_request_id}, the decision ${decision.status} on ${approvalId}`);
  }
  const done = await follow(accepted.run_id, ['completed']);
  say(`      run ${done.status} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  const completed = await webhook('run.completed', accepted.run_id);
  if (completed.data.evidence_pack_id !== done.output.evidence_pack_id) throw new DemoError(`the run.completed webhook names evidence pack ${completed.data.evidence_pack_id}, the run ${done.output.evidence_pack_id}`);
  o.receiver.assertVerified();
  say(`      webhooks  ${o.receiver.received.size} received and verified; ${o.receiver.duplicates} repeated webhook-id(s) dropped (delivery is at least once)`);
  // The endpoint's delivery log says the same: each webhook-id printed is a delivery, delivered (its
  // status is written once the receiver's 2xx is in, a moment after the receiver saw the webhook).
  const ids = [requested.id, decided.id, completed.id];
  await until(
    'the delivery log to show the three webhooks delivered',
    STEP_TIMEOUT_MS,
    async () => {
      const log = expectStatus(await http('GET', `/api/v1/webhook-endpoints/${endpoint.id}/deliveries`, tenantAdmin), 200, 'reading the delivery log');
      const delivered = new Set(log.items.filter((d: any) => d.status === 'delivered').map((d: any) => d.id));
      return ids.every((id) => delivered.has(id)) ? true : undefined;
    },
    o.guard,
  );
  say(`      log       GET /api/v1/webhook-endpoints/${endpoint.id}/deliveries: the three webhook-ids above, delivered`);

  say('[7/8] Evidence pack');
  const evidence = expectStatus(await http('GET', done.links.evidence, submitter), 200, 'reading the evidence pack');
  const verify = expectStatus(await http('GET', done.links.verify, submitter), 200, 'verifying the evidence pack');
  say(`      sha256  ${evidence.sha256}  (SHA-256 of the RFC 8785 canonical JSON)`);
  say(`      verify  ${verify.valid ? 'valid' : 'INVALID'}: recomputed ${verify.recomputed_sha256 ?? verify.sha256}`);
  if (!verify.valid) throw new DemoError('the evidence pack did not verify');
  // The run.completed webhook's signed hash is the one a receiver keeps to verify the pack later without the platform.
  if (completed.data.evidence_sha256 !== evidence.sha256) throw new DemoError(`the run.completed webhook carries evidence hash ${completed.data.evidence_sha256}, the pack ${evidence.sha256}`);

  say('[8/8] Operators');
  // The dashboard spans tenants: it takes the platform's operator role, never a tenant's admin.
  const admin = await signDevToken(o.config, { tenantId: tenant, sub: 'demo-operator', roles: [OPERATOR_ROLE], ttlSeconds: 8 * 3600 });
  say(`      Bull Board   ${o.base}/admin/queues   (queues under the prefix "${o.config.QUEUE_PREFIX}"; needs role ${OPERATOR_ROLE})`);
  if (o.keepRunning) say(`      open now     ${o.base}/admin/queues?token=${admin}   (press Sign in on its page: that uses the link up; sign out at /admin/queues/logout)`);
  else say('      to browse it, run `npm run demo -- --keep-running`, or `npm run start:api` with a JWT_SECRET in .env');
  say(`      token        npm run token -- --tenant <any uuid> --sub <you> --roles ${OPERATOR_ROLE}`);
  say('                   then open /admin/queues?token=<token> and press Sign in (once: it becomes a session cookie; the link and its token are refused after), or send another as a Bearer header');
  if (o.secretGenerated) say('      note         this demo generated its JWT_SECRET; set one in .env (see .env.example) so npm run token matches the API');
}
