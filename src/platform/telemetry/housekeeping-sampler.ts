import { AlwaysOnSampler, ParentBasedSampler, SamplingDecision, type Sampler, type SamplingResult } from '@opentelemetry/sdk-trace';

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
  // as a new root of work is; a sampled remote parent is followed, and local parents always are. Not by
  // the root's name test: a span with a remote parent is work (a request, a job's `process`, the
  // platform's `resume run` of a run stored unsampled), never BullMQ's housekeeping, whose names it
  // may share (`resume run` reads as BullMQ's `resume` of a queue `run`).
  return new ParentBasedSampler({ root, remoteParentNotSampled: new AlwaysOnSampler() });
}
