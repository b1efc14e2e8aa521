import { createTraceState, isSpanContextValid, propagation, trace, type Context } from '@opentelemetry/api';

/**
 * The propagation of the platform's own records of a trace: the trace context and baggage (the run's
 * correlation id) each job carries in Redis (bullmq-telemetry.ts), and a run's stored `traceparent`,
 * which a resume, a retry, the sweeper and a webhook attempt continue. Always W3C trace context and
 * baggage, as the SDK's default propagator writes them (jobs added before read the same): OTEL_PROPAGATORS
 * chooses what the API reads from and writes into HTTP headers (b3, none, …), not whether the API's job
 * reaches the worker in the same trace or a resume finds its run's trace. Written here rather than
 * taken from @opentelemetry/core, which a process with telemetry off would load for nothing.
 */
const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

/** Writes `ctx`'s span context (`traceparent`, `tracestate`) and baggage into `carrier`, in W3C form. */
export function injectInternal(ctx: Context, carrier: Record<string, string>): void {
  const sc = trace.getSpanContext(ctx);
  if (sc && isSpanContextValid(sc)) {
    carrier.traceparent = `00-${sc.traceId}-${sc.spanId}-0${(sc.traceFlags & 1).toString(16)}`;
    const state = sc.traceState?.serialize();
    if (state) carrier.tracestate = state;
  }
  const entries = propagation.getBaggage(ctx)?.getAllEntries() ?? [];
  if (entries.length) carrier.baggage = entries.map(([k, e]) => `${encodeURIComponent(k)}=${encodeURIComponent(e.value)}`).join(',');
}

/** `ctx` with the span context and baggage of a carrier `injectInternal` wrote (or a stored `traceparent`). */
export function extractInternal(ctx: Context, carrier: Record<string, string>): Context {
  let out = ctx;
  const m = TRACEPARENT.exec((carrier.traceparent ?? '').trim());
  if (m) {
    const sc = { traceId: m[1]!, spanId: m[2]!, traceFlags: parseInt(m[3]!, 16) & 1, isRemote: true, ...(carrier.tracestate ? { traceState: createTraceState(carrier.tracestate) } : {}) };
    if (isSpanContextValid(sc)) out = trace.setSpanContext(out, sc);
  }
  if (carrier.baggage) {
    const entries: Record<string, { value: string }> = {};
    for (const pair of carrier.baggage.split(',')) {
      const [kv] = pair.split(';');
      const eq = kv!.indexOf('=');
      if (eq <= 0) continue;
      try {
        entries[decodeURIComponent(kv!.slice(0, eq).trim())] = { value: decodeURIComponent(kv!.slice(eq + 1).trim()) };
      } catch {
        // a malformed entry is dropped, as the SDK's propagator drops it
      }
    }
    if (Object.keys(entries).length) out = propagation.setBaggage(out, propagation.createBaggage(entries));
  }
  return out;
}
