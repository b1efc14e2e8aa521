import { describe, expect, it } from 'vitest';
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, propagation, trace } from '@opentelemetry/api';
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import { CorrelationSpanProcessor, withRunCorrelation } from '../../src/platform/telemetry/correlation-span-processor.ts';
import { requestContext } from '../../src/platform/tenancy/request-context.ts';
import { ATTR } from '../../src/platform/telemetry/attributes.ts';

function setup() {
  const processor = new CorrelationSpanProcessor();
  const exporter = new InMemorySpanExporter();
  const provider = new TracerProvider({ spanProcessors: [processor, new SimpleSpanProcessor({ exporter })] });
  const tracer = provider.getTracer('test');
  const attrs = (name: string) => exporter.getFinishedSpans().find((s) => s.name === name)?.attributes;
  return { processor, tracer, attrs };
}
const principal = { sub: 'u', tenantId: 'tenant-1', roles: [] };

describe('CorrelationSpanProcessor', () => {
  it('tags spans started in a request or job context with the correlation, tenant and run ids', () => {
    const { tracer, attrs } = setup();
    requestContext.run({ requestId: 'r', correlationId: 'c-1', runId: 'run-1', principal }, () => tracer.startSpan('inside').end());
    tracer.startSpan('outside').end();
    expect(attrs('inside')).toEqual({ [ATTR.CORRELATION]: 'c-1', [ATTR.TENANT]: 'tenant-1', [ATTR.RUN]: 'run-1' });
    expect(attrs('outside')).toEqual({});
  });

  it('prefers the run correlation id carried in baggage over the request it is enqueued from (a resume)', () => {
    const { tracer, attrs } = setup();
    const ctx = propagation.setBaggage(ROOT_CONTEXT, propagation.createBaggage({ [ATTR.CORRELATION]: { value: 'c-run' } }));
    requestContext.run({ requestId: 'r', correlationId: 'c-approver', principal }, () => tracer.startSpan('enqueue', {}, ctx).end());
    expect(attrs('enqueue')).toEqual({ [ATTR.CORRELATION]: 'c-run' });
  });

  it('tags a resume enqueued into a trace this process served (the submission) with the run\'s id, not the approver request\'s', () => {
    const { tracer, attrs } = setup();
    // The submission: its POST was served here, so its trace is one an inbound request brought in.
    const submission = tracer.startSpan('POST run', { kind: SpanKind.SERVER });
    requestContext.run({ requestId: 'r1', correlationId: 'c-run', principal }, () => tracer.startSpan('submit-handler', {}, trace.setSpan(ROOT_CONTEXT, submission)).end());
    submission.end();
    // Later, an approver's request (its own trace and id) resumes the run: the job is enqueued into
    // the run's stored trace, with the run's id as the platform writes it (DurableRuntime.enqueue).
    const stored = trace.setSpanContext(ROOT_CONTEXT, submission.spanContext());
    const resume = withRunCorrelation(stored, 'c-run');
    requestContext.run({ requestId: 'r2', correlationId: 'c-approver', principal }, () => tracer.startSpan('add golden-path.evidence-pack', {}, resume).end());
    expect(attrs('add golden-path.evidence-pack')?.[ATTR.CORRELATION]).toBe('c-run');
  });

  it("ignores a caller's baggage in a trace an inbound request brought in: the request's validated id, or nothing", () => {
    const { tracer, attrs } = setup();
    const forged = propagation.setBaggage(ROOT_CONTEXT, propagation.createBaggage({ [ATTR.CORRELATION]: { value: 'victim' } }));
    const server = tracer.startSpan('inbound', { kind: SpanKind.SERVER }, forged);
    const inTrace = trace.setSpan(forged, server);
    tracer.startSpan('before-middleware', {}, inTrace).end();
    requestContext.run({ requestId: 'r', correlationId: 'mine', principal }, () => tracer.startSpan('handler', {}, inTrace).end());
    server.end();
    expect(attrs('before-middleware')).toEqual({});
    expect(attrs('handler')).toEqual({ [ATTR.CORRELATION]: 'mine', [ATTR.TENANT]: 'tenant-1' });
    expect(attrs('inbound')).toEqual({ [ATTR.CORRELATION]: 'mine' });
    // Nor is an invalid id taken from baggage anywhere.
    const junk = propagation.setBaggage(ROOT_CONTEXT, propagation.createBaggage({ [ATTR.CORRELATION]: { value: '<script>' } }));
    tracer.startSpan('junk', {}, junk).end();
    expect(attrs('junk')).toEqual({});
  });

  it('tags a live span that started before the id was known, once it is known for its trace', () => {
    const { processor, tracer, attrs } = setup();
    const server = tracer.startSpan('server');
    const early = tracer.startSpan('early', {}, trace.setSpan(ROOT_CONTEXT, server));
    early.end();
    processor.bind(server.spanContext().traceId, 'c-2');
    server.end();
    expect(attrs('server')).toEqual({ [ATTR.CORRELATION]: 'c-2' });
    // An ended span is exported as it was; it is not held.
    expect(attrs('early')).toEqual({});
  });

  it('tags the live spans of a trace when a correlated span starts in it', () => {
    const { tracer, attrs } = setup();
    const process = tracer.startSpan('process');
    requestContext.run({ requestId: 'r', correlationId: 'c-3' }, () => tracer.startSpan('step', {}, trace.setSpan(ROOT_CONTEXT, process)).end());
    process.end();
    expect(attrs('process')).toEqual({ [ATTR.CORRELATION]: 'c-3' });
  });

  it('keeps only the SQLSTATE of a PostgreSQL error in the pg instrumentation\'s span status: its message carries values', () => {
    const processor = new CorrelationSpanProcessor();
    const exporter = new InMemorySpanExporter();
    const provider = new TracerProvider({ spanProcessors: [processor, new SimpleSpanProcessor({ exporter })] });
    // What @opentelemetry/instrumentation-pg does with a failed query: error.type, then the error's message as the status.
    const query = provider.getTracer('@opentelemetry/instrumentation-pg').startSpan('pg.query:SELECT');
    query.setAttribute('error.type', '22P02');
    query.setStatus({ code: SpanStatusCode.ERROR, message: 'invalid input syntax for type uuid: "acme-secret-partner"' });
    query.end();
    // Other instrumentations' statuses are theirs to word.
    const other = provider.getTracer('test').startSpan('handler');
    other.setStatus({ code: SpanStatusCode.ERROR, message: 'step refused' });
    other.end();
    const status = (name: string) => exporter.getFinishedSpans().find((s) => s.name === name)?.status;
    expect(status('pg.query:SELECT')).toEqual({ code: SpanStatusCode.ERROR, message: 'PostgreSQL error (code: 22P02)' });
    expect(status('handler')).toEqual({ code: SpanStatusCode.ERROR, message: 'step refused' });
  });
  it("names a database error another instrumentation recorded (Express's request handler) by its SQLSTATE: message, stack and status; other errors stay", () => {
    const processor = new CorrelationSpanProcessor();
    const exporter = new InMemorySpanExporter();
    const provider = new TracerProvider({ spanProcessors: [processor, new SimpleSpanProcessor({ exporter })] });
    const tracer = provider.getTracer('@opentelemetry/instrumentation-express');
    const pgMessage = 'invalid input syntax for type uuid: "acme-secret-partner"';
    const failed = (name: string, err: { name: string; message: string; code?: string; stack: string }) => {
      const span = tracer.startSpan(name);
      span.recordException(err);
      span.setStatus({ code: SpanStatusCode.ERROR, message: err.message });
      span.end();
    };
    failed('db', { name: 'DriverException', code: '22P02', message: pgMessage, stack: `DriverException: ${pgMessage}\n    at convertException (x.js:1:1)` });
    failed('errno', { name: 'Error', code: 'EPIPE', message: 'write EPIPE', stack: 'Error: write EPIPE' });
    failed('app', { name: 'ValidationError', code: 'validation_failed', message: 'Invalid path parameters', stack: 'ValidationError: Invalid path parameters' });
    const span = (name: string) => exporter.getFinishedSpans().find((s) => s.name === name)!;
    expect(span('db').status).toEqual({ code: SpanStatusCode.ERROR, message: 'PostgreSQL error (code: 22P02)' });
    expect(span('db').events[0]!.attributes).toEqual({
      'exception.type': '22P02',
      'exception.message': 'PostgreSQL error (code: 22P02)',
      'exception.stacktrace': 'DriverException: PostgreSQL error (code: 22P02)\n    at convertException (x.js:1:1)',
    });
    expect(JSON.stringify(exporter.getFinishedSpans().map((s) => [s.status, s.events]))).not.toContain('acme-secret-partner');
    expect(span('errno').status.message).toBe('write EPIPE');
    expect(span('app').events[0]!.attributes?.['exception.message']).toBe('Invalid path parameters');
  });
});
