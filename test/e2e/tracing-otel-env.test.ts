import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, newTenant, SAMPLE_SUBMISSION, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { spawnApi, TELEMETRY_REGISTER } from '../helpers/api-process.ts';
import type { ReceivedSpan } from '../helpers/otlp-receiver.ts';
import { startTracedStack, waitRunStatus, type TracedStack } from '../helpers/traced-stack.ts';
import { ATTR } from '../../src/platform/telemetry/attributes.ts';

/**
 * The standard OTEL_* settings an operator changes. OTEL_PROPAGATORS chooses what the API reads from and writes into HTTP headers (here B3, as a Zipkin
 * or Istio shop sets it). It must not decide whether a run is one trace: the trace context and the
 * correlation id a job carries through Redis, and the run's stored traceparent that a resume continues,
 * are the platform's own records, in W3C form whatever the wire format.
 */
const SERVER = 2;
let traced: TracedStack;
let stack: TestStack;
let http: TestStack;
const tenant = newTenant();
let submitter: string;
let approver: string;
let stepNames: string[];

beforeAll(async () => {
  traced = await startTracedStack({ OTEL_PROPAGATORS: 'b3' });
  ({ stack, http } = traced);
  submitter = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
  approver = await stack.token({ tenantId: tenant, sub: 'approver-1', roles: ['approver'] });
  stepNames = stack.container.runtime.workflow('golden-path').steps.map((s) => s.name);
}, 120_000);

afterAll(async () => traced?.stop());

const waitStatus = (id: string, statuses: string[]) => waitRunStatus(http, submitter, id, statuses);

describe("an operator's OTEL_* settings (OTEL_PROPAGATORS=b3 throughout)", () => {
  it("a caller's B3 context is followed, and a run resumed by an approver is still one trace, every span with the run's correlation id", async () => {
    const cid = `b3-${randomUUID()}`;
    const callerTrace = randomUUID().replace(/-/g, '');
    const res = await api(http, 'POST', '/api/v1/golden-path/run', {
      token: submitter,
      body: SAMPLE_SUBMISSION,
      headers: { 'Idempotency-Key': randomUUID(), 'X-Correlation-Id': cid, b3: `${callerTrace}-${randomUUID().replace(/-/g, '').slice(0, 16)}-1` },
    });
    expect(res.status).toBe(202);
    const waiting = await waitStatus(res.json.run_id, ['waiting']);
    // The operator's propagator reads the caller's header: the run is in the caller's trace.
    expect(waiting.trace_id).toBe(callerTrace);
    const d = await api(http, 'POST', `/api/v1/approvals/${waiting.steps[2].output.approval_request_id}/decision`, {
      token: approver,
      body: { decision: 'approve' },
      headers: { 'Idempotency-Key': randomUUID(), 'X-Correlation-Id': `b3-decision-${randomUUID()}` },
    });
    expect(d.status).toBe(200);
    await waitStatus(res.json.run_id, ['completed']);

    const spans = await waitFor(
      () => {
        const mine = traced.receiver.spans.filter((s) => s.traceId === callerTrace);
        const steps = new Set(mine.filter((s) => s.name.startsWith('step ')).map((s) => s.name));
        const jobs = mine.filter((s) => s.service === 'dealix-worker' && s.name.startsWith('process golden-path')).length;
        // The API's server span too: another process exports it, so the worker's spans arriving say nothing of it.
        const server = mine.some((s) => s.kind === SERVER && s.name.startsWith('POST'));
        return stepNames.every((n) => steps.has(`step ${n}`)) && jobs >= 2 && server ? mine : undefined;
      },
      { timeoutMs: 60_000, what: "every step of the run and the submission's server span in the caller's trace, before and after the decision" },
    ).catch(() => traced.receiver.spans.filter((s: ReceivedSpan) => s.attributes[ATTR.CORRELATION] === cid || s.name.startsWith('step ')));
    const steps = spans.filter((s) => s.name.startsWith('step ') && s.attributes[ATTR.RUN] === res.json.run_id);
    expect(steps.map((s) => [s.name, s.traceId])).toEqual(stepNames.map((n) => [`step ${n}`, callerTrace]));
    expect(spans.some((s) => s.kind === SERVER && s.name.startsWith('POST'))).toBe(true);
    const untagged = spans.filter((s) => s.attributes[ATTR.CORRELATION] !== cid);
    expect(untagged.map((s) => `${s.service} ${s.name}`)).toEqual([]);
  });

  it("a run its sampler does not sample (OTEL_TRACES_SAMPLER) has no trace_id: none leads to a trace, though its jobs carry the unsampled context", async () => {
    const unsampled = await spawnApi({ ...stack.env, OTEL_TRACES_SAMPLER: 'always_off' }, ['--import', TELEMETRY_REGISTER]);
    try {
      const cid = `unsampled-${randomUUID()}`;
      const res = await api({ ...stack, baseUrl: unsampled.baseUrl }, 'POST', '/api/v1/golden-path/run', { token: submitter, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': randomUUID(), 'X-Correlation-Id': cid } });
      expect(res.status).toBe(202);
      const run = await waitStatus(res.json.run_id, ['waiting']);
      expect(run.trace_id).toBeNull();
      // Its context is still stored: a resume continues the run's (unsampled) trace rather than start one of its own.
      const [row] = (await stack.db.admin('select traceparent from durable_runs where id = $1', [run.run_id])).rows;
      expect(row.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-00$/);
    } finally {
      await unsampled.stop('SIGKILL');
    }
  });
});
