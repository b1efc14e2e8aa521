import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, CLASS_A_SUBMISSION, newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { spawnApi, TELEMETRY_REGISTER, type ApiProcess } from '../helpers/api-process.ts';
import { startOtlpReceiver, type OtlpReceiver } from '../helpers/otlp-receiver.ts';
import { createEndpoint, startReceiver, type Receiver } from '../helpers/webhooks.ts';
import { Queue } from 'bullmq';
import { ATTR } from '../../src/platform/telemetry/attributes.ts';
import { MAINTENANCE_QUEUE } from '../../src/platform/queue/maintenance.ts';
import { WEBHOOK_REDELIVERY_JOB } from '../../src/platform/webhooks/delivery.ts';

/**
 * A run's webhook deliveries are part of what its submission caused (ADR 0013): each attempt is a span
 * in the submission's trace, with the run's correlation id, and no secret of the endpoint in any span.
 * The real API and worker processes export OTLP/HTTP JSON to a receiver in this test (as tracing.test.ts).
 */
const INTERNAL = 1;
const SERVER = 2;
const CLIENT = 3;
const CONSUMER = 5;
let otlp: OtlpReceiver;
let receiver: Receiver;
let stack: TestStack;
let apiProc: ApiProcess;
let http: TestStack;

beforeAll(async () => {
  otlp = await startOtlpReceiver();
  receiver = await startReceiver();
  const env = {
    OTEL_SDK_DISABLED: 'false',
    OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url,
    OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
    OTEL_BSP_SCHEDULE_DELAY: '100',
    OTEL_METRICS_EXPORTER: 'none',
    WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true',
    WEBHOOK_RETRY_BASE: '50ms',
    WEBHOOK_MAX_ATTEMPTS: '3',
  };
  stack = await startStack({ api: false, workerExecArgv: ['--import', TELEMETRY_REGISTER], env });
  apiProc = await spawnApi(stack.env, ['--import', TELEMETRY_REGISTER]);
  http = { ...stack, baseUrl: apiProc.baseUrl };
  await stack.spawnWorker();
}, 120_000);

afterAll(async () => {
  await apiProc?.stop('SIGKILL');
  await stack?.stop();
  await receiver?.close();
  await otlp?.close();
});

/** A class A run submitted under correlation id `cid`, once completed (its view: run_id, trace_id, …). */
async function completedRun(admin: string, cid: string) {
  const res = await api(http, 'POST', '/api/v1/golden-path/run', { token: admin, body: CLASS_A_SUBMISSION, headers: { 'Idempotency-Key': randomUUID(), 'X-Correlation-Id': cid } });
  expect(res.status, res.text).toBe(202);
  return waitFor(
    async () => {
      const r = (await api(http, 'GET', `/api/v1/golden-path/runs/${res.json.run_id}`, { token: admin })).json;
      return r?.status === 'completed' ? r : undefined;
    },
    { timeoutMs: 60_000, what: 'the run to complete' },
  );
}

describe('webhook deliveries in the run trace', () => {
  it("each attempt of a run's delivery is a span in the submission's trace, with the correlation id, and no secret in any span", async () => {
    const tenantId = newTenant();
    const admin = await stack.token({ tenantId, sub: 'admin-trace', roles: ['admin'] });
    // A query that carries the receiver's own credential: a span must not show it.
    const urlSecret = `urlsecret${randomUUID().replace(/-/g, '')}`;
    const created = await createEndpoint(http, admin, { url: `${receiver.base}/traced?token=${urlSecret}`, events: ['run.completed'] });
    expect(created.status, created.text).toBe(201);
    const endpoint = created.json as { id: string; secret: string };
    // The first attempt fails (500), the retry delivers: two attempts, one trace.
    receiver.plan(`/traced?token=${urlSecret}`, [500]);

    const cid = `trace-webhook-${randomUUID()}`;
    const run = await completedRun(admin, cid);
    const [delivery] = (await stack.db.admin(`select id from webhook_deliveries where endpoint_id = $1`, [endpoint.id])).rows as { id: string }[];

    const attempts = await waitFor(
      () => {
        const a = otlp.spans.filter((s) => s.name === 'webhook attempt' && s.attributes['dealix.webhook.delivery_id'] === delivery!.id);
        return a.length === 2 && otlp.spans.filter((s) => s.kind === CLIENT && s.parentSpanId && a.some((x) => x.spanId === s.parentSpanId)).length === 2 ? a : undefined;
      },
      { timeoutMs: 30_000, what: 'both attempt spans and their POSTs' },
    );
    attempts.sort((x, y) => Number(x.attributes[ATTR.ATTEMPT]) - Number(y.attributes[ATTR.ATTEMPT]));
    for (const [i, span] of attempts.entries()) {
      expect(span.service).toBe('dealix-worker');
      expect(span.kind).toBe(INTERNAL);
      expect(span.traceId).toBe(run.trace_id);
      expect(span.attributes).toMatchObject({
        [ATTR.CORRELATION]: cid,
        [ATTR.TENANT]: tenantId,
        [ATTR.RUN]: run.run_id,
        [ATTR.ATTEMPT]: i + 1,
        'dealix.webhook.delivery_id': delivery!.id,
        'dealix.webhook.endpoint_id': endpoint.id,
        'dealix.webhook.event_type': 'run.completed',
        'http.response.status_code': i === 0 ? 500 : 200,
        'dealix.webhook.outcome': i === 0 ? 'retrying' : 'delivered',
        'server.address': '127.0.0.1',
      });
    }
    expect(attempts[0]!.attributes['error.type']).toBe('500');
    // The POST itself: the HTTP instrumentation's client span, a child of its attempt, its URL without the query.
    const posts = otlp.spans.filter((s) => s.kind === CLIENT && attempts.some((a) => a.spanId === s.parentSpanId));
    for (const post of posts) {
      expect(post.traceId).toBe(run.trace_id);
      expect(post.attributes).toMatchObject({ [ATTR.CORRELATION]: cid, 'http.request.method': 'POST' });
      expect(post.attributes['url.full']).toBe(`${receiver.base}/traced`);
    }
    // The receiver is a tenant's third party: it gets no trace context (no trace or span id, no sampling
    // decision, no baggage), as Stripe and Svix send none. The POSTs' client spans above stay.
    const got = receiver.received.filter((r) => r.body.includes(run.run_id));
    expect(got).toHaveLength(2);
    expect(got.map((r) => [r.headers.traceparent, r.headers.tracestate, r.headers.baggage])).toEqual(got.map(() => [undefined, undefined, undefined]));
    // Every span of the run's trace has its correlation id; none carries a secret of the endpoint.
    const untagged = otlp.spans.filter((s) => s.traceId === run.trace_id && s.attributes[ATTR.CORRELATION] !== cid);
    expect(untagged.map((s) => `${s.service} ${s.name}`)).toEqual([]);
    const exported = JSON.stringify(otlp.spans);
    expect(exported).not.toContain('whsec_');
    expect(exported).not.toContain(endpoint.secret.slice('whsec_'.length));
    expect(exported).not.toContain(urlSecret);

    // An admin's resend, days later perhaps: its attempt is still in the run's trace, with the run's
    // correlation id, linked to the resend request's trace (where its job was enqueued), not parented in it.
    const resendCid = `resend-${randomUUID()}`;
    const resent = await api(http, 'POST', `/api/v1/webhook-endpoints/${endpoint.id}/deliveries/${delivery!.id}/resend`, { token: admin, headers: { 'Idempotency-Key': randomUUID(), 'X-Correlation-Id': resendCid } });
    expect(resent.status, resent.text).toBe(202);
    const third = await waitFor(() => otlp.spans.find((s) => s.name === 'webhook attempt' && s.attributes['dealix.webhook.delivery_id'] === delivery!.id && s.attributes[ATTR.ATTEMPT] === 3), { timeoutMs: 30_000, what: 'the resent attempt span' });
    const request = await waitFor(() => otlp.spans.find((s) => s.kind === SERVER && s.attributes[ATTR.CORRELATION] === resendCid), { what: 'the resend request span' });
    expect(third.traceId).toBe(run.trace_id);
    expect(third.attributes).toMatchObject({ [ATTR.CORRELATION]: cid, 'http.response.status_code': 200, 'dealix.webhook.outcome': 'delivered' });
    expect(third.links.map((l) => l.traceId)).toEqual([request.traceId]);
    expect(request.traceId).not.toBe(run.trace_id);
    // The resent POST carries no trace context either (its job came with the resend request's).
    const all = receiver.received.filter((r) => r.body.includes(run.run_id));
    expect(all.map((r) => [r.headers.traceparent, r.headers.baggage])).toEqual([0, 1, 2].map(() => [undefined, undefined]));
  });
  it("the redelivery pass's re-enqueue: the attempt stays in the run's trace, with its correlation id, linked to the pass's trace (where its job was enqueued)", async () => {
    const tenantId = newTenant();
    const admin = await stack.token({ tenantId, sub: 'admin-redelivery', roles: ['admin'] });
    const created = await createEndpoint(http, admin, { url: `${receiver.base}/redelivered`, events: ['run.completed'] });
    expect(created.status, created.text).toBe(201);
    const cid = `trace-redelivery-${randomUUID()}`;
    const run = await completedRun(admin, cid);
    const delivery = await waitFor(
      async () => ((await stack.db.admin(`select id from webhook_deliveries where endpoint_id = $1 and status = 'delivered'`, [created.json.id])).rows as { id: string }[])[0],
      { timeoutMs: 30_000, what: 'the first delivery' },
    );
    // Owed again and overdue, its job finished: as a delivery whose job Redis lost. The pass replaces the job.
    await stack.db.admin(`update webhook_deliveries set status = 'pending', delivered_at = null, next_attempt_at = now() - interval '1 hour' where id = $1`, [delivery.id]);
    // The pass now rather than at its next minute: a job of the maintenance queue, as its scheduler adds them.
    const maintenance = new Queue(MAINTENANCE_QUEUE, { connection: stack.redis, prefix: stack.prefix });
    try {
      await maintenance.add(WEBHOOK_REDELIVERY_JOB, {});
    } finally {
      await maintenance.close();
    }
    const second = await waitFor(
      () => otlp.spans.find((s) => s.name === 'webhook attempt' && s.attributes['dealix.webhook.delivery_id'] === delivery.id && s.attributes[ATTR.ATTEMPT] === 2),
      { timeoutMs: 30_000, what: 'the redelivered attempt span' },
    );
    expect(second.traceId).toBe(run.trace_id);
    expect(second.attributes).toMatchObject({ [ATTR.CORRELATION]: cid, [ATTR.RUN]: run.run_id, 'dealix.webhook.outcome': 'delivered' });
    // Its one link is the trace of a redelivery pass — the worker's span processing a webhook-redelivery job — not the run's.
    expect(second.links).toHaveLength(1);
    const pass = await waitFor(
      () => otlp.spans.find((s) => s.kind === CONSUMER && s.attributes['bullmq.job.name'] === WEBHOOK_REDELIVERY_JOB && s.traceId === second.links[0]!.traceId),
      { what: "the redelivery pass's span in the linked trace" },
    );
    expect(pass.traceId).not.toBe(run.trace_id);
  });
});
