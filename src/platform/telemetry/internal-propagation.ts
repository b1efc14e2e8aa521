import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from '@opentelemetry/core';
import { defaultTextMapGetter, defaultTextMapSetter, type Context } from '@opentelemetry/api';

/**
 * The propagator of the platform's own records of a trace: the trace context and baggage (the run's
 * correlation id) each job carries in Redis (bullmq-telemetry.ts), and a run's stored `traceparent`,
 * which a resume, a retry, the sweeper and a webhook attempt continue. Always W3C trace context and
 * baggage: OTEL_PROPAGATORS chooses what the API reads from and writes into HTTP headers (b3, none, …),
 * not whether the API's job reaches the worker in the same trace or a resume finds its run's trace.
 */
const INTERNAL = new CompositePropagator({ propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()] });

/** Writes `ctx`'s span context (`traceparent`) and baggage into `carrier`, in W3C form. */
export function injectInternal(ctx: Context, carrier: Record<string, string>): void {
  INTERNAL.inject(ctx, carrier, defaultTextMapSetter);
}

/** `ctx` with the span context and baggage of a carrier `injectInternal` wrote (or a stored `traceparent`). */
export function extractInternal(ctx: Context, carrier: Record<string, string>): Context {
  return INTERNAL.extract(ctx, carrier, defaultTextMapGetter);
}
