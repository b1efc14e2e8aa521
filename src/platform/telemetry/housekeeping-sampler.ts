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
 * with housekeeping roots dropped, and a remote parent's "not sampled" overridden. Spans inside a
 * trace (a job's Redis calls) follow their parent.
 */
export function defaultSampler(): Sampler {
  const root = new WorkRootSampler();
  // A caller's traceparent may say "not sampled": that is the caller's choice for its own trace, not
  // for the platform's record of the run (whose trace_id the API returns). Such a request is sampled
  // as a new root would be; a sampled remote parent is followed, and local parents always are.
  return new ParentBasedSampler({ root, remoteParentNotSampled: root });
}
