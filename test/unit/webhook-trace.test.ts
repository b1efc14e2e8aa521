import { describe, expect, it } from 'vitest';
import { ROOT_CONTEXT, propagation, type TextMapPropagator } from '@opentelemetry/api';
import { outgoingUrlFull, urlWithoutQuery } from '../../src/platform/telemetry/attributes.ts';
import { attemptErrorType, startAttemptSpan } from '../../src/platform/webhooks/delivery-trace.ts';
import { extractInternal, injectInternal } from '../../src/platform/telemetry/internal-propagation.ts';

const outcome = (statusCode: number | null, error: string | null) => ({ ok: statusCode !== null && statusCode < 300 && error === null, statusCode, error, durationMs: 1 });

describe('webhook attempt spans', () => {
  it("an outgoing request's url.full keeps scheme, host, port and path, never the query or user info", () => {
    expect(urlWithoutQuery({ protocol: 'https:', hostname: 'hooks.example.com', port: 443, path: '/in?token=s3cret' })).toBe('https://hooks.example.com/in');
    expect(urlWithoutQuery({ protocol: 'http:', hostname: '127.0.0.1', host: '127.0.0.1:8080', port: '8080', path: '/a/b?x=1&y=2' })).toBe('http://127.0.0.1:8080/a/b');
    expect(urlWithoutQuery({ protocol: 'http:', hostname: '::1', port: '9000', path: '/' })).toBe('http://[::1]:9000/');
    expect(urlWithoutQuery({ hostname: 'example.com', path: null })).toBe('http://example.com/');
  });

  it("a webhook attempt's POST shows its receiver's origin only: no path (where Slack and Discord URLs carry their secret), no query", () => {
    const slack = { protocol: 'https:', hostname: 'hooks.slack.com', port: 443, path: '/services/T1/B1/TOPSECRET?token=x' };
    const { span, ctx } = startAttemptSpan({ tenantId: 't', deliveryId: 'd', endpointId: 'e', eventType: 'run.completed', attempt: 1, url: 'https://hooks.slack.com/services/T1/B1/TOPSECRET', runId: null, runTraceparent: null, runCorrelationId: null });
    span.end();
    expect(outgoingUrlFull(slack, ctx)).toBe('https://hooks.slack.com');
    expect(outgoingUrlFull({ protocol: 'http:', hostname: '127.0.0.1', port: '8080', path: '/api/webhooks/1/tok' }, ctx)).toBe('http://127.0.0.1:8080');
    // Any other outgoing request (the operator's own URLs) keeps its path, without the query.
    expect(outgoingUrlFull(slack, ROOT_CONTEXT)).toBe('https://hooks.slack.com/services/T1/B1/TOPSECRET');
  });

  it("error.type is the status code or a short class, never the error's message (which names addresses)", () => {
    expect(attemptErrorType(outcome(200, null))).toBeUndefined();
    expect(attemptErrorType(outcome(503, 'HTTP 503'))).toBe('503');
    expect(attemptErrorType(outcome(null, 'timed out after 10000 ms'))).toBe('timeout');
    expect(attemptErrorType(outcome(null, 'refused: resolves to a non-public address'))).toBe('refused');
    expect(attemptErrorType(outcome(null, 'ECONNREFUSED: connect ECONNREFUSED 10.0.0.7:443'))).toBe('ECONNREFUSED');
    expect(attemptErrorType(outcome(null, 'endpoint disabled'))).toBe('_OTHER');
  });

  it("a run's stored traceparent is continued whatever OTEL_PROPAGATORS says (b3, none): by an attempt span and by what a resume enqueues", () => {
    // OTEL_PROPAGATORS=none: the global propagator reads and writes nothing.
    const none: TextMapPropagator = { inject: () => {}, extract: (ctx) => ctx, fields: () => [] };
    propagation.setGlobalPropagator(none);
    try {
      const traceId = '0af7651916cd43dd8448eb211c80319c';
      const traceparent = `00-${traceId}-b7ad6b7169203331-01`;
      const { span } = startAttemptSpan({
        tenantId: 't', deliveryId: 'd', endpointId: 'e', eventType: 'run.completed', attempt: 1, url: 'https://hooks.example.com/in',
        runId: 'r', runTraceparent: traceparent, runCorrelationId: 'c-run',
      });
      expect(span.spanContext().traceId).toBe(traceId);
      span.end();
      // What a resume, a retry or the sweeper enqueues (inRunTrace) reads it, and a new run's is written (currentTraceContext), in W3C form.
      const carrier: Record<string, string> = {};
      injectInternal(extractInternal(ROOT_CONTEXT, { traceparent }), carrier);
      expect(carrier).toEqual({ traceparent });
    } finally {
      propagation.disable();
    }
  });
});
