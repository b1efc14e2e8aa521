import { afterEach, describe, expect, it } from 'vitest';
import { ROOT_CONTEXT, TraceFlags, createTraceState, propagation, trace } from '@opentelemetry/api';
import { extractInternal, injectInternal } from '../../src/platform/telemetry/internal-propagation.ts';
import { isValidCorrelationId } from '../../src/platform/telemetry/attributes.ts';
import { bullmqTelemetry } from '../../src/platform/telemetry/bullmq-telemetry.ts';
import { setTelemetryShutdown } from '../../src/platform/telemetry/otel-hooks.ts';

const traceId = '0af7651916cd43dd8448eb211c80319c';
const spanId = 'b7ad6b7169203331';

describe("the platform's own trace records (job metadata, a run's stored traceparent)", () => {
  afterEach(() => propagation.disable());

  it('are W3C trace context and baggage, written and read the same whatever the global propagator (OTEL_PROPAGATORS=none here)', () => {
    propagation.setGlobalPropagator({ inject: () => {}, extract: (ctx) => ctx, fields: () => [] });
    const span = trace.setSpanContext(ROOT_CONTEXT, { traceId, spanId, traceFlags: TraceFlags.SAMPLED, traceState: createTraceState('vendor=a1') });
    const ctx = propagation.setBaggage(span, propagation.createBaggage({ 'dealix.correlation_id': { value: 'order-4711' } }));
    const carrier: Record<string, string> = {};
    injectInternal(ctx, carrier);
    expect(carrier).toEqual({ traceparent: `00-${traceId}-${spanId}-01`, tracestate: 'vendor=a1', baggage: 'dealix.correlation_id=order-4711' });
    const read = extractInternal(ROOT_CONTEXT, carrier);
    expect(trace.getSpanContext(read)).toMatchObject({ traceId, spanId, traceFlags: TraceFlags.SAMPLED, isRemote: true });
    expect(trace.getSpanContext(read)?.traceState?.get('vendor')).toBe('a1');
    expect(propagation.getBaggage(read)?.getEntry('dealix.correlation_id')?.value).toBe('order-4711');
  });

  it('carry every correlation id X-Correlation-Id admits exactly: 128 characters, with the `:` baggage must percent-encode', () => {
    const ids = [`a${'Z9._:-'.repeat(21)}b`, 'order:4711', '0', `x${':'.repeat(127)}`];
    for (const id of ids) {
      expect(isValidCorrelationId(id), id).toBe(true);
      const carrier: Record<string, string> = {};
      injectInternal(propagation.setBaggage(ROOT_CONTEXT, propagation.createBaggage({ 'dealix.correlation_id': { value: id } })), carrier);
      expect(carrier.baggage).not.toContain(':');
      expect(propagation.getBaggage(extractInternal(ROOT_CONTEXT, carrier))?.getEntry('dealix.correlation_id')?.value, id).toBe(id);
    }
  });

  it('read what the SDK\'s default propagator wrote (jobs added before), keep "not sampled", and ignore what is not W3C', () => {
    const read = extractInternal(ROOT_CONTEXT, { traceparent: `00-${traceId}-${spanId}-00`, baggage: 'dealix.correlation_id=a%20b;prop=1, other=x' });
    expect(trace.getSpanContext(read)).toMatchObject({ traceId, spanId, traceFlags: TraceFlags.NONE });
    expect(propagation.getBaggage(read)?.getAllEntries().map(([k, e]) => [k, e.value])).toEqual([['dealix.correlation_id', 'a b'], ['other', 'x']]);
    for (const traceparent of ['', `00-${'0'.repeat(32)}-${spanId}-01`, `00-${traceId}-${'0'.repeat(16)}-01`, `${traceId}-${spanId}-1`, 'garbage']) {
      expect(trace.getSpanContext(extractInternal(ROOT_CONTEXT, { traceparent })), traceparent).toBeUndefined();
    }
    expect(propagation.getBaggage(extractInternal(ROOT_CONTEXT, { baggage: '%E0%A4%A=x,=y,novalue' }))).toBeUndefined();
    const none: Record<string, string> = {};
    injectInternal(ROOT_CONTEXT, none);
    expect(none).toEqual({});
  });
});

describe("a job's metadata written before the platform's own records were W3C", () => {
  afterEach(() => propagation.disable());

  it('is read with the global propagator it was written with (OTEL_PROPAGATORS=b3 on both sides of the upgrade): the job stays in its trace', async () => {
    // A single-header B3 propagator, as OTEL_PROPAGATORS=b3 installs: what an API process of the previous release wrote into each job.
    propagation.setGlobalPropagator({
      inject: () => {},
      extract: (ctx, carrier: any) => {
        const [t, s, f] = String(carrier.b3 ?? '').split('-');
        return t && s ? trace.setSpanContext(ctx, { traceId: t, spanId: s, traceFlags: f === '1' ? TraceFlags.SAMPLED : TraceFlags.NONE, isRemote: true }) : ctx;
      },
      fields: () => ['b3'],
    });
    setTelemetryShutdown(async () => {});
    const telemetry = bullmqTelemetry()!;
    const read = telemetry.contextManager.fromMetadata(ROOT_CONTEXT, JSON.stringify({ b3: `${traceId}-${spanId}-1` }));
    expect(trace.getSpanContext(read)).toMatchObject({ traceId, spanId, traceFlags: TraceFlags.SAMPLED });
    // Metadata in the platform's W3C form is read as such, the global propagator not asked.
    const w3c = telemetry.contextManager.fromMetadata(ROOT_CONTEXT, JSON.stringify({ traceparent: `00-${traceId}-${'c'.repeat(16)}-01`, b3: `${'d'.repeat(32)}-${spanId}-1` }));
    expect(trace.getSpanContext(w3c)).toMatchObject({ traceId, spanId: 'c'.repeat(16) });
  });
});
