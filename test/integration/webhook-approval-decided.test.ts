/**
 * `approval.decided` (ADR 0013, docs/api.md *Webhooks*): each human decision on an approval request is
 * one event, its deliveries inserted by the decision's own statement (the outbox), so a decision that
 * is refused or replayed under its Idempotency-Key emits nothing. Real stack: PostgreSQL as the
 * application role, Redis, a spawned worker process and a real node:http receiver; each message is
 * verified with the endpoint's secret, as a receiver would, and parsed with the published schema.
 */
import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { api, CLASS_C_SUBMISSION, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { createEndpoint, submit, tenantWithEndpoint, waitRun, webhookStackForTests, type Receiver } from '../helpers/webhooks.ts';
import { webhookPayload } from '../../src/platform/webhooks/webhook-events.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { ApprovalService } from '../../src/modules/approvals/approval.service.ts';

const ctx = webhookStackForTests(3);

/** The approval.decided deliveries of a request, as the outbox inserted them (read as the superuser: every tenant's). */
const decidedRows = async (stack: TestStack, approvalId: string) =>
  (
    await stack.db.admin(
      `select id, tenant_id, endpoint_id, status, payload from webhook_deliveries where event_type = 'approval.decided' and payload->'data'->>'approval_request_id' = $1 order by created_at, id`,
      [approvalId],
    )
  ).rows as Array<{ id: string; tenant_id: string; endpoint_id: string; status: string; payload: unknown }>;

/** What `path` received of `approvalId`'s approval.decided, verified with `secret` and parsed as published. */
const decidedAt = (receiver: Receiver, path: string, secret: string, approvalId: string) =>
  receiver
    .verified(path, secret)
    .filter((m) => m.type === 'approval.decided' && m.data.approval_request_id === approvalId)
    .map((m) => {
      expect(webhookPayload.parse(m)).toEqual(m);
      return m;
    });

/** Waits until `path` has received `n` of them. */
const receivedDecided = (receiver: Receiver, path: string, secret: string, approvalId: string, n: number) =>
  waitFor(
    () => {
      const got = decidedAt(receiver, path, secret, approvalId);
      return got.length === n && got;
    },
    { timeoutMs: 30_000, what: `${n} approval.decided at ${path}` },
  );

/** A tenant with an endpoint subscribed to approval.decided, another of its endpoints that is not, a submitter and three approvers. */
async function tenant(stack: TestStack, receiver: Receiver, name: string) {
  const t = await tenantWithEndpoint(stack, receiver, `/${name}`, ['approval.decided']);
  const unsubscribed = await createEndpoint(stack, t.admin, { url: `${receiver.base}/${name}-unsubscribed`, events: ['approval.requested', 'run.completed', 'run.rejected'] });
  expect(unsubscribed.status, unsubscribed.text).toBe(201);
  const tok = (sub: string, roles: string[] = []) => stack.token({ tenantId: t.tenantId, sub, roles });
  return {
    ...t,
    unsubscribed: unsubscribed.json as { id: string },
    submitter: await tok('submitter-1'),
    approvers: [await tok('approver-1', ['approver']), await tok('approver-2', ['approver']), await tok('approver-3', ['approver'])],
  };
}

/** A class C run of the tenant waiting for its two approvers: the run and its approval request. */
async function waitingClassC(stack: TestStack, t: Awaited<ReturnType<typeof tenant>>) {
  const runId = await submit(stack, t.submitter, CLASS_C_SUBMISSION);
  const run = await waitRun(stack, t.submitter, runId, ['waiting']);
  const list = await api(stack, 'GET', '/api/v1/approvals?limit=10', { token: t.submitter });
  const request = list.json.items.find((r: { run_id: string }) => r.run_id === runId) as { id: string; required_approvals: number; approval_class: string };
  expect(request).toMatchObject({ approval_class: 'C', required_approvals: 2 });
  return { runId, run, approvalId: request.id };
}

const decide = (stack: TestStack, approvalId: string, token: string, decision: 'approve' | 'reject', key: string = randomUUID()) =>
  api(stack, 'POST', `/api/v1/approvals/${approvalId}/decision`, { token, body: { decision }, headers: { 'Idempotency-Key': key } });

describe('approval.decided', () => {
  it('a class C request: each approval is one event (pending 1/2, then approved 2/2), signed; refused and replayed decisions emit nothing; unsubscribed and other tenants get nothing', async () => {
    const { stack, receiver } = ctx;
    const t = await tenant(stack, receiver, 'decided');
    const other = await tenant(stack, receiver, 'decided-other');
    const { runId, run, approvalId } = await waitingClassC(stack, t);

    // What every event of this request carries, whoever decides.
    const request = { approval_request_id: approvalId, run_id: runId, workflow: 'golden-path', correlation_id: run.correlation_id, required_approvals: 2 };
    const firstKey = randomUUID();
    const first = await decide(stack, approvalId, t.approvers[0]!, 'approve', firstKey);
    expect(first.status, first.text).toBe(200);
    expect(first.json).toMatchObject({ status: 'pending', approvals: 1, required_approvals: 2 });
    // Committed with the decision: its delivery exists when the answer does, one, for the subscribed endpoint.
    expect((await decidedRows(stack, approvalId)).map((r) => r.endpoint_id)).toEqual([t.endpoint.id]);
    const [one] = await receivedDecided(receiver, '/decided', t.endpoint.secret, approvalId, 1);
    const firstDecision = (await api(stack, 'GET', `/api/v1/approvals/${approvalId}`, { token: t.submitter })).json.decisions[0];
    expect(one!.data).toEqual({
      ...request,
      decision: 'approve',
      approver: 'approver-1',
      status: 'pending',
      approvals: 1,
      decided_at: firstDecision.decided_at,
    });

    // The replay of the decision answers as stored and inserts nothing; the same approver again, refused (409), nothing either.
    const replay = await decide(stack, approvalId, t.approvers[0]!, 'approve', firstKey);
    expect(replay.status, replay.text).toBe(200);
    expect(replay.json).toEqual(first.json);
    const twice = await decide(stack, approvalId, t.approvers[0]!, 'approve');
    expect(twice.status, twice.text).toBe(409);
    expect(twice.json.code).toBe('approver_already_decided');
    expect(await decidedRows(stack, approvalId)).toHaveLength(1);

    // The second approver decides the request: the second event says so.
    const second = await decide(stack, approvalId, t.approvers[1]!, 'approve');
    expect(second.status, second.text).toBe(200);
    expect(second.json).toMatchObject({ status: 'approved', approvals: 2, required_approvals: 2 });
    const both = await receivedDecided(receiver, '/decided', t.endpoint.secret, approvalId, 2);
    const secondDecision = (await api(stack, 'GET', `/api/v1/approvals/${approvalId}`, { token: t.submitter })).json.decisions[1];
    expect(both.map((m) => m.data).find((d) => d.approver === 'approver-2')).toEqual({
      ...request,
      decision: 'approve',
      approver: 'approver-2',
      status: 'approved',
      approvals: 2,
      decided_at: secondDecision.decided_at,
    });

    // A decision after the request was decided is refused (409) and emits nothing.
    const late = await decide(stack, approvalId, t.approvers[2]!, 'reject');
    expect(late.status, late.text).toBe(409);
    expect(late.json.code).toBe('approval_decided');

    // Two events in all, both to the subscribed endpoint of the deciding tenant: none to its unsubscribed one, none to the other tenant's.
    const rows = await decidedRows(stack, approvalId);
    expect(rows.map((r) => [r.tenant_id, r.endpoint_id])).toEqual([
      [t.tenantId, t.endpoint.id],
      [t.tenantId, t.endpoint.id],
    ]);
    await waitFor(async () => (await decidedRows(stack, approvalId)).every((r) => r.status === 'delivered'), { timeoutMs: 30_000, what: 'both deliveries recorded' });
    expect(receiver.received.filter((r) => r.body.includes(approvalId) && r.body.includes('approval.decided'))).toHaveLength(2);
    expect(receiver.received.filter((r) => r.path === '/decided-unsubscribed' && r.body.includes('approval.decided'))).toEqual([]);
    expect(receiver.received.filter((r) => r.path.startsWith('/decided-other'))).toEqual([]);
    const otherRows = await stack.db.admin(`select count(*)::int as n from webhook_deliveries where tenant_id = $1`, [other.tenantId]);
    expect(otherRows.rows[0].n).toBe(0);
    await waitRun(stack, t.submitter, runId, ['completed']);
  });

  it('a reject is one event: decision reject, status rejected; nothing after it', async () => {
    const { stack, receiver } = ctx;
    const t = await tenant(stack, receiver, 'rejected');
    const { runId, approvalId } = await waitingClassC(stack, t);
    const rejected = await decide(stack, approvalId, t.approvers[0]!, 'reject');
    expect(rejected.status, rejected.text).toBe(200);
    expect(rejected.json).toMatchObject({ status: 'rejected', approvals: 0, required_approvals: 2 });
    const [message] = await receivedDecided(receiver, '/rejected', t.endpoint.secret, approvalId, 1);
    expect(message!.data).toMatchObject({ approval_request_id: approvalId, run_id: runId, decision: 'reject', approver: 'approver-1', status: 'rejected', approvals: 0, required_approvals: 2 });
    const after = await decide(stack, approvalId, t.approvers[1]!, 'approve');
    expect(after.status, after.text).toBe(409);
    expect(await decidedRows(stack, approvalId)).toHaveLength(1);
    await waitRun(stack, t.submitter, runId, ['rejected']);
  });

  // It carried now(), its transaction's start: a class C second approval whose transaction began before
  // the first's said it happened before the first, and a receiver ordering by `timestamp` (as the docs
  // say to) applied "approved 2/2" and then "pending 1/2".
  it("each event's timestamp is its decision's decided_at: a second approval whose transaction began before the first's is after it", async () => {
    const { stack, receiver } = ctx;
    const t = await tenant(stack, receiver, 'decided-order');
    const { runId, approvalId } = await waitingClassC(stack, t);
    const approvals = new ApprovalService(stack.container.runtime);
    // The second approval (approver-2) begins first and waits for an advisory lock another connection holds.
    const gate = new pg.Client({ connectionString: stack.db.adminUrl });
    await gate.connect();
    try {
      await gate.query('begin');
      await gate.query('select pg_advisory_xact_lock(7319)');
      const second = tenantEm(stack.container.orm, t.tenantId)
        .transactional(async (tx) => {
          await tx.execute('select pg_advisory_xact_lock(7319)');
          return approvals.decide(tx, { sub: 'approver-2', tenantId: t.tenantId, roles: ['approver'] }, approvalId, 'approve', null);
        })
        // After the commit, as the route does: its deliveries dispatched, the run job enqueued.
        .then(async ({ result, afterCommit }) => (await afterCommit(), { result }))
        .then((ok) => ok, (error: unknown) => ({ error }));
      // Waiting, its transaction begun a few milliseconds ago at least (read outside the gate's
      // transaction, which would keep one snapshot of pg_stat_activity).
      await waitFor(
        async () =>
          (
            await stack.db.admin(
              `select count(*)::int as n from pg_locks l join pg_stat_activity a on a.pid = l.pid
                where l.locktype = 'advisory' and l.objid = 7319 and not l.granted and a.datname = current_database()
                  and clock_timestamp() - a.xact_start > interval '5 milliseconds'`,
            )
          ).rows[0].n > 0,
        { timeoutMs: 20_000, what: 'the second approval to begin and wait for the advisory lock' },
      );
      // The first approval (approver-1) is decided meanwhile, start to end.
      const first = await decide(stack, approvalId, t.approvers[0]!, 'approve');
      expect(first.status, first.text).toBe(200);
      expect(first.json).toMatchObject({ status: 'pending', approvals: 1 });
      await gate.query('commit');
      expect(await second).toEqual({ result: expect.objectContaining({ status: 'approved', approvals: 2 }) });
    } finally {
      await gate.query('rollback').catch(() => {});
      await gate.end();
    }
    const decisions = (await api(stack, 'GET', `/api/v1/approvals/${approvalId}`, { token: t.submitter })).json.decisions as Array<{ approver: string; decided_at: string }>;
    expect(decisions.map((d) => d.approver)).toEqual(['approver-1', 'approver-2']);
    const events = (await decidedRows(stack, approvalId)).map((r) => r.payload as { timestamp: string; data: { approver: string; decided_at: string } });
    // Each event happened when its decision was recorded: ordered by timestamp, as they were applied.
    const byTime = events.map((e) => ({ approver: e.data.approver, timestamp: e.timestamp, decided_at: e.data.decided_at }))
      // (a tie of the milliseconds kept: either order is right, take the request's)
      .sort((x, y) => x.timestamp.localeCompare(y.timestamp) || decisions.findIndex((d) => d.approver === x.approver) - decisions.findIndex((d) => d.approver === y.approver));
    expect(byTime).toEqual(decisions.map((d) => ({ approver: d.approver, timestamp: d.decided_at, decided_at: d.decided_at })));
    await receivedDecided(receiver, '/decided-order', t.endpoint.secret, approvalId, 2);
    await waitRun(stack, t.submitter, runId, ['completed']);
  });

  it('a decision whose transaction rolls back leaves no delivery; the same decision committed leaves exactly one', async () => {
    const { stack, receiver } = ctx;
    const t = await tenant(stack, receiver, 'decided-rollback');
    const { approvalId } = await waitingClassC(stack, t);
    const approvals = new ApprovalService(stack.container.runtime);
    const approver = { sub: 'approver-1', tenantId: t.tenantId, roles: ['approver'] };
    const decideIn = (then: () => void) =>
      tenantEm(stack.container.orm, t.tenantId).transactional(async (tx) => {
        const { result } = await approvals.decide(tx, approver, approvalId, 'approve', null);
        expect(result).toMatchObject({ status: 'pending', approvals: 1 });
        // Inserted in the decision's transaction (its own read sees it) …
        const inTx = await tx.execute<{ n: number }[]>(`select count(*)::int as n from webhook_deliveries where event_type = 'approval.decided' and payload->'data'->>'approval_request_id' = ?`, [approvalId]);
        expect(inTx[0]!.n).toBe(1);
        then();
      });
    await expect(
      decideIn(() => {
        throw new Error('the decision rolls back');
      }),
    ).rejects.toThrow('rolls back');
    expect(await decidedRows(stack, approvalId)).toEqual([]); // … and gone with it
    await decideIn(() => undefined);
    expect((await decidedRows(stack, approvalId)).map((r) => r.endpoint_id)).toEqual([t.endpoint.id]);
  });
});
