import { context, trace } from '@opentelemetry/api';
import { injectInternal } from './internal-propagation.ts';

/** The active trace id and W3C traceparent (whatever OTEL_PROPAGATORS says), if a span is recording (null with telemetry off). */
export function currentTraceContext(): { traceId: string | null; traceparent: string | null } {
  const sc = trace.getSpan(context.active())?.spanContext();
  if (!sc || sc.traceId === '00000000000000000000000000000000') return { traceId: null, traceparent: null };
  const carrier: Record<string, string> = {};
  injectInternal(context.active(), carrier);
  return { traceId: sc.traceId, traceparent: carrier.traceparent ?? null };
}
