import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import type { Job } from 'bullmq';
import { api, CLASS_A_SUBMISSION, newTenant, SAMPLE_SUBMISSION, type TestStack, type WorkerHandle } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { jsonLines, spawnApi, TELEMETRY_REGISTER, type ApiProcess } from '../helpers/api-process.ts';
import type { OtlpReceiver, ReceivedSpan } from '../helpers/otlp-receiver.ts';
import { otelEnv, startTracedStack, waitRunStatus, type TracedStack } from '../helpers/traced-stack.ts';
import { ATTR } from '../../src/platform/telemetry/attributes.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { postSignIn } from '../helpers/dashboard-sign-in.ts';
import { holdTable } from '../helpers/table-lock.ts';

/**
 * One submission is one trace: the real API and worker processes, started with the OTel bootstrap
 * (--import register.ts) and exporting OTLP/HTTP JSON to a receiver in this test.
 */
const SERVER = 2;
let receiver: OtlpReceiver;
let stack: TestStack;
let apiProc: ApiProcess;
let worker: WorkerHandle;
let http: TestStack;
const tenant = newTenant();
let submitter: string;
let approver: string;
let stepNames: string[];

const correlated = (id: string) => receiver.spans.filter((s) => s.attributes[ATTR.CORRELATION] === id);

async function submit(body: unknown, correlationId: string) {
  return api(http, 'POST', '/api/v1/golden-path/run', { token: submitter, body, headers: { 'Idempotency-Key': randomUUID(), 'X-Correlation-Id': correlationId } });
}
const waitStatus = (id: string, statuses: string[]) => waitRunStatus(http, submitter, id, statuses);
/** Waits until the receiver holds the POST's server span and every step span of the run. */
async function waitTrace(correlationId: string): Promise<ReceivedSpan[]> {
  return waitFor(
    () => {
      const spans = correlated(correlationId);
      const steps = new Set(spans.filter((s) => s.name.startsWith('step ')).map((s) => s.name));
      const server = spans.some((s) => s.kind === SERVER && s.name.startsWith('POST'));
      // A run job's BullMQ span ends after its last step: the trace is whole once it has arrived too.
      const job = spans.some((s) => s.service === 'dealix-worker' && s.name.startsWith('process'));
      return server && job && stepNames.every((n) => steps.has(`step ${n}`)) ? spans : undefined;
    },
    { timeoutMs: 60_000, what: `the spans of ${correlationId}` },
  );
}

let traced: TracedStack;
beforeAll(async () => {
  // The sweeper runs every second, for runs untouched for a second: a repair happens within a test's deadline.
  traced = await startTracedStack({ SWEEPER_INTERVAL: '1s', SWEEPER_MIN_AGE: '1s' });
  ({ receiver, stack, apiProc, http, worker } = traced);
  submitter = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
  approver = await stack.token({ tenantId: tenant, sub: 'approver-1', roles: ['approver'] });
  stepNames = stack.container.runtime.workflow('golden-path').steps.map((s) => s.name);
}, 120_000);

afterAll(async () => traced?.stop());

describe('tracing across the API and worker processes', () => {
  it('one submission is one trace: the HTTP span and all four step spans, each with the correlation id', async () => {
    const cid = `trace-a-${randomUUID()}`;
    const res = await submit(CLASS_A_SUBMISSION, cid);
    expect(res.status).toBe(202);
    expect(res.headers.get('x-correlation-id')).toBe(cid);
    expect(res.json.correlation_id).toBe(cid);
    const run = await waitStatus(res.json.run_id, ['completed']);
    expect(run.correlation_id).toBe(cid);
    expect(run.trace_id).toMatch(/^[0-9a-f]{32}$/);

    const spans = await waitTrace(cid);
    expect(new Set(spans.map((s) => s.traceId))).toEqual(new Set([run.trace_id]));
    const server = spans.find((s) => s.kind === SERVER && s.name.startsWith('POST'))!;
    expect(server.service).toBe('dealix-api');
    for (const name of stepNames) {
      const step = spans.find((s) => s.name === `step ${name}`)!;
      expect(step.service).toBe('dealix-worker');
      expect(step.attributes).toMatchObject({ [ATTR.RUN]: run.run_id, [ATTR.TENANT]: tenant, [ATTR.STEP]: name, [ATTR.REPLAYED]: false });
      expect(step.attributes[ATTR.SEQUENCE]).toBe(stepNames.indexOf(name) + 1);
      expect(step.attributes[ATTR.ATTEMPT]).toBe(1);
    }
    // Enqueue and processing spans of BullMQ, and Postgres client spans, join the same trace.
    expect(spans.some((s) => s.service === 'dealix-api' && s.name.startsWith('add golden-path'))).toBe(true);
    // The run job's own span names its run and tenant, as its step spans do.
    const jobSpan = spans.find((s) => s.service === 'dealix-worker' && s.name === 'process golden-path')!;
    expect(jobSpan.attributes).toMatchObject({ [ATTR.RUN]: run.run_id, [ATTR.TENANT]: tenant });
    expect(spans.some((s) => s.service === 'dealix-worker' && (s.attributes['db.system.name'] ?? s.attributes['db.system']) === 'postgresql')).toBe(true);
    // Every span of the run's trace carries the correlation id, not only the ones we open ourselves.
    const untagged = receiver.spans.filter((s) => s.traceId === run.trace_id && s.attributes[ATTR.CORRELATION] !== cid);
    expect(untagged.map((s) => `${s.service} ${s.name}`)).toEqual([]);
  });

  it('a run resumed by an approver stays in its submission\'s trace and keeps its correlation id', async () => {
    const cid = `trace-b-${randomUUID()}`;
    const res = await submit(SAMPLE_SUBMISSION, cid);
    const waiting = await waitStatus(res.json.run_id, ['waiting']);
    const decisionCid = `decision-${randomUUID()}`;
    const d = await api(http, 'POST', `/api/v1/approvals/${waiting.steps[2].output.approval_request_id}/decision`, {
      token: approver,
      body: { decision: 'approve' },
      headers: { 'Idempotency-Key': randomUUID(), 'X-Correlation-Id': decisionCid },
    });
    expect(d.status).toBe(200);
    const run = await waitStatus(res.json.run_id, ['completed']);
    const spans = await waitTrace(cid);
    expect(new Set(spans.map((s) => s.traceId))).toEqual(new Set([run.trace_id]));
    // The decision request is its own trace with its own correlation id; the resumed steps are not in it.
    const decision = await waitFor(() => correlated(decisionCid).find((s) => s.kind === SERVER), { what: 'the decision span' });
    expect(decision.traceId).not.toBe(run.trace_id);
    expect(correlated(decisionCid).filter((s) => s.name.startsWith('step '))).toEqual([]);
    // The run's trace links to the request that resumed it: who approved is one click away from the run.
    const resume = await waitFor(() => receiver.spans.find((s) => s.traceId === run.trace_id && s.name === 'resume run'), { what: "the resume's span in the run's trace" });
    expect(resume.links).toEqual([{ traceId: decision.traceId, spanId: expect.stringMatching(/^[0-9a-f]{16}$/) }]);
    expect(resume.attributes).toMatchObject({ [ATTR.RUN]: run.run_id, [ATTR.TENANT]: tenant, [ATTR.CORRELATION]: cid });
    // Every span of the run's trace has the run's correlation id: also the resume's enqueue, which the
    // decision request made in the API process that had served the submission.
    const add = await waitFor(() => correlated(cid).find((s) => s.service === 'dealix-api' && s.name === `add golden-path.${stepNames[3]}`), { what: "the resume's enqueue span with the run's correlation id" });
    expect(add.parentSpanId).toBe(resume.spanId);
    const untagged = receiver.spans.filter((s) => s.traceId === run.trace_id && s.attributes[ATTR.CORRELATION] !== cid);
    expect(untagged.map((s) => `${s.service} ${s.name} ${s.attributes[ATTR.CORRELATION]}`)).toEqual([]);
  });

  it('the correlation id round-trips: echoed or generated on every response (errors too), on the run and in the job data', async () => {
    const invalid = await api(http, 'GET', '/api/v1/golden-path/runs', { token: submitter, headers: { 'X-Correlation-Id': 'not valid!' } });
    expect(invalid.status).toBe(200);
    expect(invalid.headers.get('x-correlation-id')).toMatch(/^[0-9a-f-]{36}$/);
    const errors = [
      await api(http, 'GET', '/api/v1/golden-path/runs', { headers: { 'X-Correlation-Id': 'err-401' } }),
      await api(http, 'GET', '/no/such/route', { headers: { 'X-Correlation-Id': 'err-404' } }),
      await api(http, 'POST', '/api/v1/golden-path/run', { token: submitter, rawBody: '{', headers: { 'content-type': 'application/json', 'X-Correlation-Id': 'err-400', 'Idempotency-Key': randomUUID() } }),
    ];
    expect(errors.map((r) => [r.status, r.headers.get('x-correlation-id'), r.headers.get('content-type')?.split(';')[0]])).toEqual([
      [401, 'err-401', 'application/problem+json'],
      [404, 'err-404', 'application/problem+json'],
      [400, 'err-400', 'application/problem+json'],
    ]);

    const cid = `trace-job-${randomUUID()}`;
    const res = await submit(CLASS_A_SUBMISSION, cid);
    const run = await waitStatus(res.json.run_id, ['completed']);
    // As the application role under the tenant's RLS.
    const rows = await tenantEm(stack.container.orm, tenant).execute('select correlation_id, trace_id from durable_runs where id = ?', [run.run_id]);
    expect(rows).toEqual([{ correlation_id: cid, trace_id: run.trace_id }]);
    // A class A run is carried by one run job (ADR 0005); its data holds the run's correlation id. Read
    // once completed: the run's end commits before its job's processor returns and BullMQ completes it.
    const mine = await waitFor(async () => {
      const jobs = (await stack.container.queues.get('golden-path')!.getJobs(['completed'])) as Job[];
      const found = jobs.filter((j) => j.data.run_id === run.run_id);
      return found.length ? found : undefined;
    }, { what: "the run's job to complete" });
    expect(mine.map((j) => j.data._correlation_id)).toEqual([cid]);
  });

  it('logs carry trace and correlation ids in the API and the worker, and never a bearer token', async () => {
    const cid = `trace-log-${randomUUID()}`;
    const res = await submit(CLASS_A_SUBMISSION, cid);
    const run = await waitStatus(res.json.run_id, ['completed']);
    const request = await waitFor(() => apiProc.lines().find((l) => l.correlation_id === cid && l.req?.method === 'POST'), { what: 'the request log line' });
    expect(request).toMatchObject({ trace_id: run.trace_id, tenant_id: tenant });
    expect(request.span_id).toMatch(/^[0-9a-f]{16}$/);
    expect(request.req.headers.authorization).toBe('[redacted]');
    const steps = await waitFor(() => {
      const l = jsonLines(worker.output()).filter((x) => x.correlation_id === cid && x.msg === 'step checkpointed');
      return l.length === stepNames.length ? l : undefined;
    }, { what: 'the step log lines' });
    for (const l of steps) expect(l).toMatchObject({ trace_id: run.trace_id, run_id: run.run_id, tenant_id: tenant });
    expect(apiProc.output()).not.toContain(submitter);
    expect(worker.output()).not.toContain(submitter);
  });

  it("spans carry no tenant's data and no token; a caller can neither forge the correlation id in baggage nor switch tracing off", { timeout: 180_000 }, async () => {
    const marker = `PII-${randomUUID()}`;
    const cid = `trace-guard-${randomUUID()}`;
    const victim = `victim-${randomUUID()}`;
    const body = { ...CLASS_A_SUBMISSION, partner: { ...CLASS_A_SUBMISSION.partner, name: marker } };
    const headers = {
      'Idempotency-Key': randomUUID(),
      'X-Correlation-Id': cid,
      // Another correlation id in baggage, and a parent that says "not sampled".
      baggage: `dealix.correlation_id=${victim},other=1`,
      traceparent: `00-${randomUUID().replace(/-/g, '')}-${randomUUID().replace(/-/g, '').slice(0, 16)}-00`,
    };
    const res = await api(http, 'POST', '/api/v1/golden-path/run', { token: submitter, body, headers });
    expect(res.status).toBe(202);
    const run = await waitStatus(res.json.run_id, ['completed']);
    // Sampled all the same: the run's trace exists, whole (before, a "00" parent left it with no span).
    const spans = await waitTrace(cid);
    expect(spans.some((s) => s.traceId === run.trace_id)).toBe(true);
    // The dashboard's sign-in link (its page) and token exchange, spelled as Express still routes them: neither traced nor logged.
    // A token each: a `?token=` link works once.
    const operators = [await stack.token({ tenantId: tenant, sub: 'ops-1', roles: ['platform-operator'] }), await stack.token({ tenantId: tenant, sub: 'ops-1', roles: ['platform-operator'] })];
    for (const path of [`/ADMIN/QUEUES?token=${operators[0]}`, `/admin/queues?%74oken=${operators[1]}`]) {
      expect((await fetch(`${http.baseUrl}${path}`, { redirect: 'manual' })).status, path.slice(0, 20)).toBe(200);
    }
    for (const [i, path] of ['/ADMIN/QUEUES/SIGN-IN', '/admin/queues/sign-in'].entries()) {
      expect((await postSignIn(http.baseUrl, operators[i]!, { path })).status, path).toBe(303);
    }
    // A later run's whole trace has arrived: so has everything exported before it.
    const later = `trace-guard-later-${randomUUID()}`;
    await waitStatus((await submit(CLASS_A_SUBMISSION, later)).json.run_id, ['completed']);
    await waitTrace(later);
    const exported = JSON.stringify(receiver.spans);
    expect(exported).not.toContain(marker);
    expect(exported).not.toContain(victim);
    // Nor the client's Idempotency-Key (a statement's parameter, or a literal of its text), nor the bearer token.
    expect(exported).not.toContain(headers['Idempotency-Key']);
    expect(exported).not.toContain(submitter.split('.')[2]!);
    for (const operator of operators) expect(exported).not.toContain(operator.split('.')[2]!);
    await waitFor(() => apiProc.lines().some((l) => l.correlation_id === later), { what: 'the later request log line' });
    for (const operator of operators) expect(apiProc.output()).not.toContain(operator.split('.')[2]!);
    expect(correlated(cid).length).toBe(spans.length);
  });

  it("requests that share a caller's trace each carry their own correlation id, one after the other or at once", async () => {
    // One client sends several requests under one trace (or a caller names another's trace): each
    // request's server span and everything under it carry its own X-Correlation-Id, never another's.
    const traceId = randomUUID().replace(/-/g, '');
    const hex16 = () => randomUUID().replace(/-/g, '').slice(0, 16);
    const expected = new Map<string, string>();
    const send = (method: 'GET' | 'POST', name: string) => {
      const parent = hex16();
      const cid = `${name}-${randomUUID()}`;
      expected.set(parent, cid);
      const headers = { traceparent: `00-${traceId}-${parent}-01`, 'X-Correlation-Id': cid, 'Idempotency-Key': randomUUID() };
      return method === 'POST' ? api(http, 'POST', '/api/v1/golden-path/run', { token: submitter, body: CLASS_A_SUBMISSION, headers }) : api(http, 'GET', '/api/v1/golden-path/runs?limit=1', { token: submitter, headers });
    };
    // Two submissions one after the other, then two requests at once.
    expect((await send('POST', 'order-1')).status).toBe(202);
    expect((await send('POST', 'order-2')).status).toBe(202);
    expect((await Promise.all([send('GET', 'list-1'), send('GET', 'list-2')])).map((r) => r.status)).toEqual([200, 200]);
    const servers = await waitFor(() => {
      const found = receiver.spans.filter((s) => s.traceId === traceId && s.kind === SERVER);
      return found.length === expected.size ? found : undefined;
    }, { what: 'the four server spans' });
    expect(servers.map((s) => [s.name.split(' ')[0], s.attributes[ATTR.CORRELATION]])).toEqual(servers.map((s) => [s.name.split(' ')[0], expected.get(s.parentSpanId!)]));
    // And every API span under each server span: its own request's id (a server span ends after them, so they have arrived).
    const byId = new Map(receiver.spans.filter((s) => s.traceId === traceId).map((s) => [s.spanId, s]));
    const requestOf = (s: ReceivedSpan): ReceivedSpan | undefined => (s.kind === SERVER ? s : s.parentSpanId && byId.get(s.parentSpanId) ? requestOf(byId.get(s.parentSpanId)!) : undefined);
    const apiSpans = [...byId.values()].filter((s) => s.service === 'dealix-api');
    expect(apiSpans.length).toBeGreaterThan(servers.length);
    const wrong = apiSpans.filter((s) => s.attributes[ATTR.CORRELATION] !== expected.get(requestOf(s)?.parentSpanId ?? ''));
    expect(wrong.map((s) => `${s.name} ${s.attributes[ATTR.CORRELATION]}`)).toEqual([]);
  });

  it("a malformed JSON body reaches no span: body-parser's error quotes the body, and is recorded without it", async () => {
    const marker = `tokenSECRET-${randomUUID()}`;
    const short = `x${randomUUID().slice(0, 6)}`;
    const cids: string[] = [];
    for (const rawBody of [`{"a": ${marker}}`, `{"a":${short}}`]) {
      const cid = `trace-json-${randomUUID()}`;
      cids.push(cid);
      const res = await api(http, 'POST', '/api/v1/golden-path/run', { token: submitter, rawBody, headers: { 'content-type': 'application/json', 'X-Correlation-Id': cid, 'Idempotency-Key': randomUUID() } });
      expect([res.status, res.headers.get('content-type')?.split(';')[0], res.json.code]).toEqual([400, 'application/problem+json', 'malformed_json']);
    }
    const spans = await waitFor(() => {
      const mine = cids.map((cid) => correlated(cid));
      return mine.every((m) => m.some((s) => s.kind === SERVER)) ? mine.flat() : undefined;
    }, { what: "the malformed requests' spans" });
    // The error is still recorded, by its kind.
    expect(spans.some((s) => s.events.some((e) => e.name === 'exception'))).toBe(true);
    const exported = JSON.stringify(receiver.spans);
    expect(exported).not.toContain('tokenSECR');
    expect(exported).not.toContain(short);
  });

  it("an SLA timer the sweeper re-creates for a waiting run is in the run's trace, with its correlation id", async () => {
    const cid = `trace-sla-${randomUUID()}`;
    const run = await waitStatus((await submit(SAMPLE_SUBMISSION, cid)).json.run_id, ['waiting']);
    const queue = stack.container.queues.get('timers')!;
    const [timer] = (await queue.getDelayed()).filter((j) => j.name === 'approval-sla' && j.data.run_id === run.run_id);
    const timerAdds = () => receiver.spans.filter((s) => s.service === 'dealix-worker' && s.name === 'add timers.approval-sla');
    // The approval step's own timer, in the run's trace; then the timer is gone (Redis kept the rest).
    await waitFor(() => correlated(cid).some((s) => s.name === 'add timers.approval-sla'), { what: "the approval step's timer span" });
    const before = timerAdds().length;
    await timer!.remove();
    await waitFor(async () => (await queue.getJobState(timer!.id!)) === 'delayed', { timeoutMs: 30_000, what: 'the sweeper to re-create the timer' });
    const repaired = await waitFor(() => timerAdds()[before], { what: "the re-created timer's span" });
    expect(repaired.traceId).toBe(run.trace_id);
    expect(repaired.attributes[ATTR.CORRELATION]).toBe(cid);
  });

  it("a credential a client puts in a URL's query (token, access_token, password, any case or encoding, bracketed; a JWT under any name) reaches neither the server span nor the log", async () => {
    const cid = `trace-query-${randomUUID()}`;
    const secret = `qs${randomUUID().replace(/-/g, '')}`;
    // Under a bracketed name too (`token%5B%5D`, `token[0]`: a security review found those logged whole), and a JWT under any name.
    const jwt = `eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIke${secret}In0.${secret}d`;
    const res = await api(http, 'GET', `/api/v1/golden-path/runs?access_token=${secret}a&Token=${secret}b&%70assword=${secret}c&token%5B%5D=${secret}e&token[0]=${secret}f&next=${jwt}&limit=5`, { headers: { 'X-Correlation-Id': cid } });
    expect(res.status).toBe(401);
    const server = await waitFor(() => correlated(cid).find((s) => s.kind === SERVER), { what: 'the request span' });
    expect(server.attributes['url.query']).toContain('limit=5');
    expect(JSON.stringify(server)).not.toContain(secret);
    const line = await waitFor(() => apiProc.lines().find((l) => l.correlation_id === cid), { what: 'the request log line' });
    expect(JSON.stringify(line)).not.toContain(secret);
  });

  it("a request that fails on the database: its spans name the error by its SQLSTATE, never PostgreSQL's message", async () => {
    // Its own API, whose statements give up after a second, and a lock that makes the submission's wait.
    const impatient = await spawnApi({ ...stack.env, DATABASE_STATEMENT_TIMEOUT: '1s' }, ['--import', TELEMETRY_REGISTER]);
    const lock = await holdTable(stack.env.MIGRATION_DATABASE_URL!, 'durable_runs', 'access exclusive');
    try {
      const cid = `trace-db-error-${randomUUID()}`;
      const res = await api({ ...stack, baseUrl: impatient.baseUrl }, 'POST', '/api/v1/golden-path/run', { token: submitter, body: CLASS_A_SUBMISSION, headers: { 'Idempotency-Key': randomUUID(), 'X-Correlation-Id': cid } });
      expect([res.status, res.json.code]).toEqual([503, 'database_timeout']);
      const spans = await waitFor(() => {
        const mine = correlated(cid);
        return mine.some((s) => s.kind === SERVER) ? mine : undefined;
      }, { what: 'the failed request\'s spans' });
      // The request handler's span records the error Express was handed (@opentelemetry/instrumentation-express).
      const failed = spans.filter((s) => s.events.some((e) => e.name === 'exception'));
      expect(failed.map((s) => s.name)).toContain('request handler');
      for (const s of failed) expect(s.status, s.name).toEqual({ code: 2, message: 'PostgreSQL error (code: 57014)' });
      const handler = failed.find((s) => s.name === 'request handler')!;
      expect(handler.events.map((e) => [e.attributes['exception.type'], e.attributes['exception.message']])).toEqual([['57014', 'PostgreSQL error (code: 57014)']]);
      expect(JSON.stringify(spans)).not.toContain('canceling statement');
    } finally {
      await lock.close();
      await impatient.stop('SIGKILL');
    }
  });

  it("a worker's metrics endpoint starts no trace, whatever the path (a scrape or a port scan)", async () => {
    const probe = await stack.spawnWorker(otelEnv(receiver.url, { WORKER_METRICS_PORT: '0' }));
    const port = Number(/"metrics_port":(\d+)/.exec(probe.output())![1]);
    const marker = `scan-${randomUUID()}`;
    for (const path of ['/metrics', `/${marker}`, `/metrics/${marker}`, `/?${marker}`]) await (await fetch(`http://127.0.0.1:${port}${path}`)).arrayBuffer();
    // The stop flushes what the worker buffered: anything it traced is at the receiver once it has exited.
    probe.kill('SIGTERM');
    expect(await probe.exited).toBe(0);
    const served = receiver.spans.filter((s) => s.kind === SERVER && s.service === 'dealix-worker');
    expect(served).toEqual([]);
    expect(JSON.stringify(receiver.spans)).not.toContain(marker);
  });

  it('shutdown flushes buffered spans', async () => {
    worker.kill('SIGTERM');
    await worker.exited;
    // A batch delay and size that never trigger: only the shutdown flush can deliver these spans.
    const buffered = await stack.spawnWorker(otelEnv(receiver.url, { OTEL_BSP_SCHEDULE_DELAY: '600000', OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '100000', OTEL_BSP_MAX_QUEUE_SIZE: '100000' }));
    const cid = `trace-flush-${randomUUID()}`;
    const res = await submit(CLASS_A_SUBMISSION, cid);
    await waitStatus(res.json.run_id, ['completed']);
    expect(correlated(cid).filter((s) => s.service === 'dealix-worker')).toEqual([]);
    buffered.kill('SIGTERM');
    expect(await buffered.exited).toBe(0);
    await waitTrace(cid);
  });

  it('with the collector down, requests and jobs behave as before', async () => {
    await receiver.close();
    await stack.spawnWorker();
    const cid = `trace-down-${randomUUID()}`;
    const res = await submit(CLASS_A_SUBMISSION, cid);
    expect(res.status).toBe(202);
    const run = await waitStatus(res.json.run_id, ['completed']);
    expect(run.steps.map((s: { status: string }) => s.status)).toEqual(stepNames.map(() => 'completed'));
    expect(apiProc.proc.exitCode).toBeNull();
  });
});
