import { ParentBasedSampler, SamplingDecision, type Sampler, type SamplingResult } from '@opentelemetry/sdk-trace';

/** BullMQ's own timers and polls: each would start a trace of its own every second or two, per queue and worker. */
const HOUSEKEEPING = /^(getNextJob|moveStalledJobsToWait|startStalledCheckTimer|extendLocks|rateLimit|close|pause|resume)\b/;

/** Samples every new trace except BullMQ housekeeping roots, so traces show work, not polling. */
class WorkRootSampler implements Sampler {
  shouldSample(_ctx: unknown, _traceId: string, spanName: string): SamplingResult {
    return { decision: HOUSEKEEPING.test(spanName) ? SamplingDecision.NOT_RECORD : SamplingDecision.RECORD_AND_SAMPLED };
  }
  toString(): string {
    return 'WorkRootSampler';
  }
}

/**
 * The default sampler (used when OTEL_TRACES_SAMPLER is unset): parent-based like the SDK's default,
 * with housekeeping roots dropped. Spans inside a trace (a job's Redis calls) follow their parent.
 */
export function defaultSampler(): Sampler {
  return new ParentBasedSampler({ root: new WorkRootSampler() });
}
