import { context, propagation, trace } from '@opentelemetry/api';

/** The active trace id and W3C traceparent, if a span is recording (null with telemetry off). */
export function currentTraceContext(): { traceId: string | null; traceparent: string | null } {
  const sc = trace.getSpan(context.active())?.spanContext();
  if (!sc || sc.traceId === '00000000000000000000000000000000') return { traceId: null, traceparent: null };
  const carrier: Record<string, string> = {};
  propagation.inject(context.active(), carrier);
  return { traceId: sc.traceId, traceparent: carrier.traceparent ?? null };
}
