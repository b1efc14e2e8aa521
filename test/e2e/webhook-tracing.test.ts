import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, CLASS_A_SUBMISSION, newTenant, startStack, type TestStack, type WorkerHandle } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { jsonLines, spawnApi, TELEMETRY_REGISTER, type ApiProcess } from '../helpers/api-process.ts';
import { startOtlpReceiver, type OtlpReceiver } from '../helpers/otlp-receiver.ts';
import { createEndpoint, ENDPOINTS, startReceiver, type Receiver } from '../helpers/webhooks.ts';
import { Queue } from 'bullmq';
import { ATTR } from '../../src/platform/telemetry/attributes.ts';
import { MAINTENANCE_QUEUE } from '../../src/platform/queue/maintenance.ts';
import { WEBHOOK_QUEUE, WEBHOOK_REDELIVERY_JOB } from '../../src/platform/webhooks/delivery.ts';
import { deliveryJobId } from '../../src/platform/queue/job-ids.ts';

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
let worker: WorkerHandle;

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
  worker = await stack.spawnWorker();
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

/** A new tenant, its admin (`sub`), and its endpoint at the receiver's `path` for `run.completed`. */
async function tenantWithEndpoint(sub: string, path: string) {
  const tenantId = newTenant();
  const admin = await stack.token({ tenantId, sub, roles: ['admin'] });
  const created = await createEndpoint(http, admin, { url: `${receiver.base}${path}`, events: ['run.completed'] });
  expect(created.status, created.text).toBe(201);
  return { tenantId, admin, created };
}

describe('webhook deliveries in the run trace', () => {
  it("each attempt of a run's delivery is a span in the submission's trace, with the correlation id, and no secret in any span", async () => {
    const tenantId = newTenant();
    const admin = await stack.token({ tenantId, sub: 'admin-trace', roles: ['admin'] });
    // A query that carries the receiver's own credential, and a path that does too (Slack's
    // `/services/T…/B…/<secret>`, Discord's `/api/webhooks/<id>/<token>`): a span must show neither.
    const urlSecret = `urlsecret${randomUUID().replace(/-/g, '')}`;
    const pathSecret = `TOPSECRET${randomUUID().replace(/-/g, '')}`;
    const path = `/services/T1/B1/${pathSecret}?token=${urlSecret}`;
    const created = await createEndpoint(http, admin, { url: `${receiver.base}${path}`, events: ['run.completed'] });
    expect(created.status, created.text).toBe(201);
    const endpoint = created.json as { id: string; secret: string };
    // The first attempt fails (500), the retry delivers: two attempts, one trace.
    receiver.plan(path, [500]);

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
    // The POST itself: the HTTP instrumentation's client span, a child of its attempt, its URL the origin only (no path, no query).
    const posts = otlp.spans.filter((s) => s.kind === CLIENT && attempts.some((a) => a.spanId === s.parentSpanId));
    for (const post of posts) {
      expect(post.traceId).toBe(run.trace_id);
      expect(post.attributes).toMatchObject({ [ATTR.CORRELATION]: cid, 'http.request.method': 'POST', 'server.address': '127.0.0.1' });
      expect(post.attributes['url.full']).toBe(receiver.base);
      expect(JSON.stringify(post)).not.toContain('/services/');
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
    expect(exported).not.toContain(pathSecret);

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
    // Each attempt's log line is one of the run's lines (its run id and correlation id) and names the
    // attempt's span — also the resent one, whose job ran in the resend request's trace.
    const logged = await waitFor(() => {
      const l = jsonLines(worker.output()).filter((x) => x.webhook_delivery_id === delivery!.id && typeof x.attempt === 'number');
      return l.length === 3 ? l.sort((x, y) => x.attempt - y.attempt) : undefined;
    }, { what: "the attempts' log lines" });
    expect(logged.map((l) => [l.msg, l.correlation_id, l.run_id, l.trace_id, l.span_id])).toEqual(
      [...attempts, third].map((a, i) => [i === 0 ? 'webhook delivery attempt failed; retrying later' : 'webhook delivered', cid, run.run_id, run.trace_id, a.spanId]),
    );
    // The resent POST's span shows no path either.
    expect(JSON.stringify(otlp.spans)).not.toContain(pathSecret);
  });

  it("a request's jobs carry its correlation id into the worker, never what the caller's baggage says", async () => {
    const { tenantId, admin, created } = await tenantWithEndpoint('admin-baggage', '/baggage');
    const cid = `test-event-${randomUUID()}`;
    const victim = `victim-${randomUUID()}`;
    const junk = `junk${randomUUID().replace(/-/g, '')}`;
    // A test event: its delivery job is enqueued by the request, and has no run to take an id from.
    const res = await api(http, 'POST', `${ENDPOINTS}/${created.json.id}/test`, {
      token: admin,
      headers: { 'Idempotency-Key': randomUUID(), 'X-Correlation-Id': cid, baggage: `dealix.correlation_id=${victim},other=${junk}` },
    });
    expect(res.status, res.text).toBe(202);
    const request = await waitFor(() => otlp.spans.find((s) => s.kind === SERVER && s.attributes[ATTR.CORRELATION] === cid), { what: 'the test request span' });
    const spans = await waitFor(() => {
      const inTrace = otlp.spans.filter((s) => s.traceId === request.traceId);
      const worker = inTrace.filter((s) => s.service === 'dealix-worker');
      return worker.some((s) => s.kind === CONSUMER) && worker.some((s) => s.name === 'webhook attempt') ? inTrace : undefined;
    }, { timeoutMs: 30_000, what: "the worker's spans in the request's trace" });
    // Every span of the request's trace, in the API and in the worker, has the request's validated id.
    expect(spans.filter((s) => s.attributes[ATTR.CORRELATION] !== cid).map((s) => `${s.service} ${s.name} ${s.attributes[ATTR.CORRELATION]}`)).toEqual([]);
    expect(JSON.stringify(otlp.spans)).not.toContain(victim);
    // Nor does the caller's baggage ride along in the job (Redis) to whatever the worker calls.
    const webhooks = new Queue(WEBHOOK_QUEUE, { connection: stack.redis, prefix: stack.prefix });
    try {
      const jobs = await webhooks.getJobs(['completed', 'waiting', 'active', 'delayed']);
      const mine = jobs.filter((j) => JSON.stringify(j.opts.telemetry ?? {}).includes(request.traceId));
      expect(mine.length).toBeGreaterThan(0);
      expect(JSON.stringify(mine.map((j) => j.opts))).not.toContain(junk);
    } finally {
      await webhooks.close();
    }
    // A test event is of no run: its attempt's line names no run (nor another's id) and its attempt's span.
    const attempt = spans.find((s) => s.name === 'webhook attempt')!;
    const line = await waitFor(() => jsonLines(worker.output()).find((l) => l.webhook_delivery_id === attempt.attributes['dealix.webhook.delivery_id'] && l.msg === 'webhook delivered'), { what: "the test event's attempt line" });
    expect(line).toMatchObject({ trace_id: request.traceId, span_id: attempt.spanId, tenant_id: tenantId });
    expect(line).not.toHaveProperty('run_id');
    expect(JSON.stringify(line)).not.toContain(victim);
  });

  it("the redelivery pass's re-enqueue: the attempt stays in the run's trace, with its correlation id, linked to the pass's trace (where its job was enqueued)", async () => {
    const { admin, created } = await tenantWithEndpoint('admin-redelivery', '/redelivered');
    const cid = `trace-redelivery-${randomUUID()}`;
    const run = await completedRun(admin, cid);
    const delivery = await waitFor(
      async () => ((await stack.db.admin(`select id from webhook_deliveries where endpoint_id = $1 and status = 'delivered'`, [created.json.id])).rows as { id: string }[])[0],
      { timeoutMs: 30_000, what: 'the first delivery' },
    );
    // Its job finished (the row reads delivered before the job's processor returns and BullMQ completes it:
    // a job still active is alive, and the pass would rightly leave the delivery to it).
    const webhooks = stack.container.queues.get(WEBHOOK_QUEUE)!;
    await waitFor(async () => (await webhooks.getJobState(deliveryJobId(delivery.id))) === 'completed', { what: "the first delivery's job to complete" });
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
