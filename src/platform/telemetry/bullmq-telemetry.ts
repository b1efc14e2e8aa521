import { BullMQOtel } from 'bullmq-otel';
import { propagation, type Context } from '@opentelemetry/api';
import { INSTRUMENTATION_VERSION } from './attributes.ts';
import { extractInternal, injectInternal } from './internal-propagation.ts';
import { telemetryStarted } from './otel-hooks.ts';

/**
 * BullMQ's OpenTelemetry adapter for Queue, FlowProducer and Worker: the producer injects the trace
 * context (and baggage: the correlation id) into each job, the worker's `process` span continues it, so
 * a submission and every step it enqueues are one trace. The job's metadata is written and read in W3C
 * form whatever OTEL_PROPAGATORS says (internal-propagation.ts): with `b3` or `none` there, bullmq-otel's
 * global propagator would carry no baggage, or nothing. Undefined when the SDK is not running, so
 * queues pay nothing for telemetry that is off.
 */
export function bullmqTelemetry(): BullMQOtel | undefined {
  if (!telemetryStarted()) return undefined;
  const telemetry = new BullMQOtel({ tracerName: 'dealix-bullmq', version: INSTRUMENTATION_VERSION });
  telemetry.contextManager.getMetadata = (ctx: Context) => {
    const carrier: Record<string, string> = {};
    injectInternal(ctx, carrier);
    return JSON.stringify(carrier);
  };
  telemetry.contextManager.fromMetadata = (active: Context, metadata: string) => {
    const carrier = JSON.parse(metadata) as Record<string, string>;
    const ctx = extractInternal(active, carrier);
    // A job added by a release that wrote the global propagator's form (OTEL_PROPAGATORS=b3, jaeger, …:
    // no W3C traceparent) — queued across the upgrade, or by an old web process of a rolling deploy —
    // is read as it was written, so its steps stay in its submission's trace.
    return carrier.traceparent === undefined && Object.keys(carrier).length ? propagation.extract(ctx, carrier) : ctx;
  };
  return telemetry;
}
