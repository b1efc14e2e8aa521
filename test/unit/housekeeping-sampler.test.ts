import { describe, expect, it } from 'vitest';
import { ROOT_CONTEXT, SpanKind, TraceFlags, trace } from '@opentelemetry/api';
import { SamplingDecision } from '@opentelemetry/sdk-trace';
import { defaultSampler } from '../../src/platform/telemetry/housekeeping-sampler.ts';

const traceId = '0af7651916cd43dd8448eb211c80319c';
const remote = (traceFlags: TraceFlags) => trace.setSpanContext(ROOT_CONTEXT, { traceId, spanId: 'b7ad6b7169203331', traceFlags, isRemote: true });
const decide = (ctx: typeof ROOT_CONTEXT, name: string, kind = SpanKind.INTERNAL) => defaultSampler().shouldSample(ctx, traceId, name, kind, {}, []).decision;

describe('the default sampler', () => {
  it("drops BullMQ's housekeeping roots and samples roots of work", () => {
    expect(decide(ROOT_CONTEXT, 'getNextJob golden-path')).toBe(SamplingDecision.NOT_RECORD);
    expect(decide(ROOT_CONTEXT, 'resume golden-path')).toBe(SamplingDecision.NOT_RECORD);
    expect(decide(ROOT_CONTEXT, 'POST /api/v1/golden-path/run', SpanKind.SERVER)).toBe(SamplingDecision.RECORD_AND_SAMPLED);
  });

  it("samples every span under a remote parent that says 'not sampled', whatever its name — the platform's `resume run` of a run stored unsampled too", () => {
    // A run stored unsampled (submitted under a ratio sampler) resumed under the default one: its steps are
    // sampled (their process spans' remote parent is overridden), and so must be the span that links the resume to its request.
    expect(decide(remote(TraceFlags.NONE), 'resume run')).toBe(SamplingDecision.RECORD_AND_SAMPLED);
    expect(decide(remote(TraceFlags.NONE), 'process golden-path', SpanKind.CONSUMER)).toBe(SamplingDecision.RECORD_AND_SAMPLED);
    expect(decide(remote(TraceFlags.SAMPLED), 'resume run')).toBe(SamplingDecision.RECORD_AND_SAMPLED);
  });
});
