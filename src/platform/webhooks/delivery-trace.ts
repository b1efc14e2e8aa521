import { context, SpanKind, SpanStatusCode, trace, type Context, type Link, type Span } from '@opentelemetry/api';
import { ATTR, INSTRUMENTATION_VERSION, ORIGIN_ONLY_URL } from '../telemetry/attributes.ts';
import { withRunCorrelation } from '../telemetry/correlation-span-processor.ts';
import { extractInternal } from '../telemetry/internal-propagation.ts';
import type { AttemptOutcome } from './send.ts';
import { hostOf } from './ssrf.ts';

const tracer = trace.getTracer('dealix-webhooks', INSTRUMENTATION_VERSION);

/** The span attributes of a delivery attempt (ADR 0013), besides the ones in ATTR. */
export const WEBHOOK_ATTR = {
  DELIVERY: 'dealix.webhook.delivery_id',
  ENDPOINT: 'dealix.webhook.endpoint_id',
  EVENT_TYPE: 'dealix.webhook.event_type',
  OUTCOME: 'dealix.webhook.outcome',
} as const;

/** What an attempt's span is made of: the delivery, and the run its event is of (null for an endpoint's event, or a run deleted since). */
export interface AttemptTraceInfo {
  tenantId: string;
  deliveryId: string;
  endpointId: string;
  eventType: string;
  attempt: number;
  url: string;
  runId: string | null;
  runTraceparent: string | null;
  runCorrelationId: string | null;
}

/**
 * Starts the span of one delivery attempt, `webhook attempt`, in the trace of the run whose event it
 * is — the submission's, from the run's stored traceparent, as a resumed step's (inRunTrace) — with the
 * run's correlation id, so the POST (the HTTP instrumentation's client span, its child) is in it too.
 * The job's own context is where the delivery was enqueued from: the run's last step usually, but
 * also the redelivery pass, an admin's resend or a cancel request; when that is another trace the
 * span links to it. Attributes name the delivery, never its URL's path or query or a secret; nor does
 * the POST's client span, whose `url.full` is the receiver's origin (ORIGIN_ONLY_URL).
 */
export function startAttemptSpan(info: AttemptTraceInfo): { span: Span; ctx: Context } {
  const active = context.active();
  let parent = active;
  const links: Link[] = [];
  if (info.runTraceparent) {
    const run = extractInternal(active, { traceparent: info.runTraceparent });
    const runSc = trace.getSpanContext(run);
    if (runSc) {
      const here = trace.getSpanContext(active);
      if (here && here.traceId !== runSc.traceId) links.push({ context: here });
      parent = run;
    }
  }
  if (info.runCorrelationId) parent = withRunCorrelation(parent, info.runCorrelationId);
  const url = new URL(info.url);
  const span = tracer.startSpan(
    'webhook attempt',
    {
      kind: SpanKind.INTERNAL,
      links,
      attributes: {
        [ATTR.TENANT]: info.tenantId,
        ...(info.runId ? { [ATTR.RUN]: info.runId } : {}),
        [ATTR.ATTEMPT]: info.attempt,
        [WEBHOOK_ATTR.DELIVERY]: info.deliveryId,
        [WEBHOOK_ATTR.ENDPOINT]: info.endpointId,
        [WEBHOOK_ATTR.EVENT_TYPE]: info.eventType,
        'server.address': hostOf(url),
        'server.port': Number(url.port || (url.protocol === 'https:' ? 443 : 80)),
      },
    },
    parent,
  );
  // The POST's client span (the HTTP instrumentation's, in `ctx`) shows the receiver's origin only, not its path (outgoingUrlFull).
  return { span, ctx: trace.setSpan(parent, span).setValue(ORIGIN_ONLY_URL, true) };
}

/**
 * The `error.type` of a failed attempt (OTel's convention: the status code, else a short class):
 * never the error's message, which names the receiver's addresses.
 */
export function attemptErrorType(outcome: AttemptOutcome): string | undefined {
  if (outcome.ok) return undefined;
  if (outcome.statusCode !== null) return String(outcome.statusCode);
  const error = outcome.error ?? '';
  if (error.startsWith('timed out')) return 'timeout';
  if (error.startsWith('refused')) return 'refused';
  return /^[A-Z][A-Z0-9_]{1,63}(?=:)/.exec(error)?.[0] ?? '_OTHER';
}

/** Ends an attempt's span with its answer and what was recorded (`delivered`, `retrying`, `failed`, `superseded`). */
export function endAttemptSpan(span: Span, outcome: AttemptOutcome, recorded: string): void {
  if (outcome.statusCode !== null) span.setAttribute('http.response.status_code', outcome.statusCode);
  span.setAttribute(WEBHOOK_ATTR.OUTCOME, recorded);
  const errorType = attemptErrorType(outcome);
  if (errorType) {
    span.setAttribute('error.type', errorType);
    span.setStatus({ code: SpanStatusCode.ERROR, message: errorType });
  }
  span.end();
}
