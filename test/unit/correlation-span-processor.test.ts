import { describe, expect, it } from 'vitest';
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, propagation, trace, type Context, type Span } from '@opentelemetry/api';
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import { CorrelationSpanProcessor, withRunCorrelation } from '../../src/platform/telemetry/correlation-span-processor.ts';
import { requestContext } from '../../src/platform/tenancy/request-context.ts';
import { ATTR } from '../../src/platform/telemetry/attributes.ts';
import { RPCType, setRPCMetadata } from '@opentelemetry/core';

function setup() {
  const processor = new CorrelationSpanProcessor();
  const exporter = new InMemorySpanExporter();
  const provider = new TracerProvider({ spanProcessors: [processor, new SimpleSpanProcessor({ exporter })] });
  const tracer = provider.getTracer('test');
  const attrs = (name: string) => exporter.getFinishedSpans().find((s) => s.name === name)?.attributes;
  return { processor, tracer, attrs };
}
const principal = { sub: 'u', tenantId: 'tenant-1', roles: [] };
/** The context the HTTP instrumentation runs a request in: its server span active, and as the request's RPC metadata. */
const inRequest = (parent: Context, server: Span) => setRPCMetadata(trace.setSpan(parent, server), { type: RPCType.HTTP, span: server });
/** A parent context in the trace `traceId` a caller's `traceparent` names. */
const remoteParent = (traceId: string, spanId: string) => trace.setSpanContext(ROOT_CONTEXT, { traceId, spanId, traceFlags: 1, isRemote: true });

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
    const inTrace = inRequest(forged, server);
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

  it("requests that share a caller's trace each keep their own correlation id, one after the other or at once", () => {
    const { processor, tracer } = setup();
    const T = 'ab'.repeat(16);
    /** One inbound request as the HTTP and Express instrumentations and the correlation middleware make it. */
    const request = (parentSpanId: string, correlationId: string) => {
      const server = tracer.startSpan(`server ${correlationId}`, { kind: SpanKind.SERVER }, remoteParent(T, parentSpanId));
      const ctx = inRequest(remoteParent(T, parentSpanId), server);
      const early = tracer.startSpan(`middleware ${correlationId}`, {}, ctx);
      return {
        server,
        early,
        bind: () => processor.bindRequest(server, correlationId),
        handle: () => requestContext.run({ requestId: correlationId, correlationId, principal }, () => tracer.startSpan(`handler ${correlationId}`, {}, ctx).end()),
        end: () => (early.end(), server.end()),
      };
    };
    const attr = (s: Span) => (s as unknown as { attributes: Record<string, unknown> }).attributes[ATTR.CORRELATION];
    // One after the other: the second's spans take nothing from the first.
    const one = request('a'.repeat(16), 'order-1');
    one.bind();
    one.handle();
    one.end();
    const two = request('b'.repeat(16), 'order-2');
    expect([attr(two.server), attr(two.early)]).toEqual([undefined, undefined]);
    two.bind();
    two.handle();
    two.end();
    expect([attr(one.server), attr(one.early), attr(two.server), attr(two.early)]).toEqual(['order-1', 'order-1', 'order-2', 'order-2']);
    // At once: both held in the trace before either binds; each binds only its own.
    const three = request('c'.repeat(16), 'order-3');
    const four = request('d'.repeat(16), 'order-4');
    three.handle();
    three.bind();
    expect([attr(four.server), attr(four.early)]).toEqual([undefined, undefined]);
    four.bind();
    four.handle();
    three.end();
    four.end();
    expect([attr(three.server), attr(three.early), attr(four.server), attr(four.early)]).toEqual(['order-3', 'order-3', 'order-4', 'order-4']);
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
