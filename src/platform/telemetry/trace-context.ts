import { context, trace, TraceFlags } from '@opentelemetry/api';
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
