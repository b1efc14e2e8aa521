import { propagation, type Context } from '@opentelemetry/api';
import type { ReadableSpan, Span, SpanProcessor } from '@opentelemetry/sdk-trace';
import { currentContext } from '../tenancy/request-context.ts';
import { ATTR } from './attributes.ts';

/** The baggage entry that carries the business correlation id across processes (BullMQ job metadata). */
export const CORRELATION_BAGGAGE_KEY = ATTR.CORRELATION;

/** Caps the spans held while they wait for a correlation id, so a span that never ends cannot leak memory. */
const MAX_PENDING_TRACES = 10_000;

/**
 * Puts `dealix.correlation_id` (and tenant and run ids where known) on every span of a run. The id
 * comes from the parent context's baggage (set where a run is enqueued, so it crosses into workers
 * with the job) or else from the request/job AsyncLocalStorage context. Spans that start before the
 * id is known (the HTTP server span, the first middleware) are held per trace while they are live
 * and tagged when the id arrives: `bindCorrelation` or the first correlated span of the same trace.
 */
export class CorrelationSpanProcessor implements SpanProcessor {
  private readonly pending = new Map<string, Set<Span>>();

  onStart(span: Span, parentContext: Context): void {
    const fromBaggage = propagation.getBaggage(parentContext)?.getEntry(CORRELATION_BAGGAGE_KEY)?.value;
    const ctx = currentContext();
    const correlationId = fromBaggage ?? ctx?.correlationId;
    const traceId = span.spanContext().traceId;
    if (!correlationId) {
      this.hold(traceId, span);
      return;
    }
    span.setAttribute(ATTR.CORRELATION, correlationId);
    if (ctx && (!fromBaggage || fromBaggage === ctx.correlationId)) {
      if (ctx.principal?.tenantId) span.setAttribute(ATTR.TENANT, ctx.principal.tenantId);
      if (ctx.runId) span.setAttribute(ATTR.RUN, ctx.runId);
    }
    this.bind(traceId, correlationId);
  }

  onEnd(span: ReadableSpan): void {
    const traceId = span.spanContext().traceId;
    const held = this.pending.get(traceId);
    if (!held) return;
    held.delete(span as Span);
    if (held.size === 0) this.pending.delete(traceId);
  }

  /** Tags the still-running spans of `traceId` that started before the correlation id was known. */
  bind(traceId: string, correlationId: string): void {
    const held = this.pending.get(traceId);
    if (!held) return;
    this.pending.delete(traceId);
    for (const s of held) s.setAttribute(ATTR.CORRELATION, correlationId);
  }

  async forceFlush(): Promise<void> {}

  async shutdown(): Promise<void> {
    this.pending.clear();
  }

  private hold(traceId: string, span: Span): void {
    let held = this.pending.get(traceId);
    if (!held) {
      if (this.pending.size >= MAX_PENDING_TRACES) this.pending.clear();
      held = new Set();
      this.pending.set(traceId, held);
    }
    held.add(span);
  }
}

let active: CorrelationSpanProcessor | undefined;

/** The processor register.ts installed (none when telemetry is off). */
export function installCorrelationProcessor(): CorrelationSpanProcessor {
  active = new CorrelationSpanProcessor();
  return active;
}

/** Called where a correlation id is first known for a trace (the HTTP request); a no-op with telemetry off. */
export function bindCorrelation(traceId: string, correlationId: string): void {
  active?.bind(traceId, correlationId);
}
