import { context, trace, TraceFlags } from '@opentelemetry/api';
import { suppressTracing } from '@opentelemetry/core';
import { injectInternal } from './internal-propagation.ts';

/**
 * The active trace: its id if it is sampled (what the API returns as a run's `trace_id` must lead to a
 * trace), and its W3C traceparent whatever OTEL_PROPAGATORS says, also when not sampled (a resume
 * continues the run's trace, unsampled too, rather than start one of its own). Both null with telemetry off.
 */
export function currentTraceContext(): { traceId: string | null; traceparent: string | null } {
  const sc = trace.getSpan(context.active())?.spanContext();
  if (!sc || sc.traceId === '00000000000000000000000000000000') return { traceId: null, traceparent: null };
  const carrier: Record<string, string> = {};
  injectInternal(context.active(), carrier);
  return { traceId: sc.traceFlags & TraceFlags.SAMPLED ? sc.traceId : null, traceparent: carrier.traceparent ?? null };
}

/**
 * `fn` with tracing suppressed (@opentelemetry/core's suppressTracing, which every instrumentation and
 * propagator honours): what it calls starts no span and writes no `traceparent`, `tracestate` or `baggage`
 * into an outgoing request, redirects included. For calls to a third party that has no business with the
 * caller's trace or its baggage (the request's correlation id): the identity provider's JWKS (jwt.ts).
 * A no-op with telemetry off.
 */
export function untraced<T>(fn: () => T): T {
  return context.with(suppressTracing(context.active()), fn);
}
