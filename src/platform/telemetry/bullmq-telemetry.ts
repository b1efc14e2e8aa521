import { BullMQOtel } from 'bullmq-otel';
import { INSTRUMENTATION_VERSION } from './attributes.ts';
import { telemetryStarted } from './otel-hooks.ts';

/**
 * BullMQ's OpenTelemetry adapter for Queue, FlowProducer and Worker: the producer injects the trace
 * context (and baggage: the correlation id) into each job, the worker's `process` span continues it, so
 * a submission and every step it enqueues are one trace. Undefined when the SDK is not running, so
 * queues pay nothing for telemetry that is off.
 */
export function bullmqTelemetry(): BullMQOtel | undefined {
  return telemetryStarted() ? new BullMQOtel({ tracerName: 'dealix-bullmq', version: INSTRUMENTATION_VERSION }) : undefined;
}
