import { createContextKey, propagation, SpanKind, SpanStatusCode, type Context } from '@opentelemetry/api';
import type { ReadableSpan, Span, SpanProcessor } from '@opentelemetry/sdk-trace';
import { getRPCMetadata } from '@opentelemetry/core';
import { currentContext } from '../tenancy/request-context.ts';
import { ATTR, isValidCorrelationId } from './attributes.ts';

/** The baggage entry that carries the business correlation id across processes (BullMQ job metadata). */
export const CORRELATION_BAGGAGE_KEY = ATTR.CORRELATION;

/**
 * The run's correlation id as the platform wrote it into a context in this process (withRunCorrelation):
 * unlike baggage, which a caller's request may bring, only the platform's code sets it.
 */
const RUN_CORRELATION = createContextKey('dealix.run_correlation_id');

/** The pg instrumentation's scope, and the attribute it puts an error's SQLSTATE in. */
const PG_INSTRUMENTATION = '@opentelemetry/instrumentation-pg';
const ATTR_ERROR_TYPE = 'error.type';
const EXCEPTION_TYPE = 'exception.type';
const EXCEPTION_MESSAGE = 'exception.message';
const EXCEPTION_STACKTRACE = 'exception.stacktrace';
/** A SQLSTATE, as recordException writes a database error's `code` in `exception.type` (never an errno name: those have no digit). */
const SQLSTATE = /^(?=.*\d)[0-9A-Z]{5}$/;
/** The code in the pg instrumentation's exception event: `PostgreSQL error of type 'error' occurred (code: 57014)`. */
const PG_EVENT_CODE = /\(code: ([0-9A-Z]{5})\)/;
const databaseError = (code: string) => `PostgreSQL error (code: ${code})`;

/** Caps the spans held while they wait for a correlation id, so a span that never ends cannot leak memory. */
const MAX_PENDING_TRACES = 10_000;

/**
 * Puts `dealix.correlation_id` (and tenant and run ids where known) on every span of a run. The id
 * comes from the request/job AsyncLocalStorage context, or else from the parent context's baggage
 * (set where a run is enqueued, so it crosses into workers with the job), if it is a valid id. Spans that start before the
 * id is known (the HTTP server span, the first middleware) are held while they are live and tagged
 * when the id arrives: `bindRequestCorrelation` or the first correlated span of the same request, or,
 * outside an inbound request (a job in a worker), of the same trace.
 *
 * A span of an inbound request is held and tagged per REQUEST (its server span, which the HTTP
 * instrumentation puts in the request's context as RPC metadata), never per trace: requests that
 * share a trace — a caller's `traceparent`, one client sending several requests under one trace, or
 * a caller naming another tenant's run trace on purpose — never take each other's id.
 */
export class CorrelationSpanProcessor implements SpanProcessor {
  /** Live spans waiting for their id, by request (its server span's id) or, outside a request, by trace id. */
  private readonly pending = new Map<string, Set<Span>>();
  /** Where each held span is held (its key in `pending`). */
  private readonly heldAt = new WeakMap<Span, string>();
  /** The correlation id each recent request (by its server span's id) or trace (by its id) has in this process. */
  private readonly known = new Map<string, string>();
  /** Recent traces an inbound HTTP request started or continued in this process. */
  private readonly inbound = new Map<string, true>();

  onStart(span: Span, parentContext: Context): void {
    const traceId = span.spanContext().traceId;
    // A trace that an inbound request started or continued in this process: its baggage is the
    // caller's, who sends what it likes, and must not put another id, or any text, on the run's spans.
    if (span.kind === SpanKind.SERVER) this.remember(this.inbound, traceId, true);
    // The run's id wins where the platform set it: in this process, the context DurableRuntime.enqueue
    // opens (withRunCorrelation), also in the submission's trace when this process served the
    // submission, so a resume or retry enqueued from an approver's or client's request carries the
    // run's id, not the request's; in a trace no request brought in, the baggage (a job carries the
    // run's id into the worker). Otherwise the request's or job's context (its id validated), then the
    // id this trace already has here.
    const ctx = currentContext();
    const own = parentContext.getValue(RUN_CORRELATION);
    const carried = own ?? (this.inbound.has(traceId) ? undefined : propagation.getBaggage(parentContext)?.getEntry(CORRELATION_BAGGAGE_KEY)?.value);
    const fromBaggage = isValidCorrelationId(carried) ? carried : undefined;
    // The request the span is part of (a span id: 16 hex digits, never a 32-digit trace id). An inbound
    // trace's span outside any request takes nothing by trace either: another request may have shared it.
    const request = span.kind === SpanKind.SERVER ? span.spanContext().spanId : requestOf(parentContext, traceId);
    const key = request ?? traceId;
    const correlationId = fromBaggage ?? ctx?.correlationId ?? (request || !this.inbound.has(traceId) ? this.known.get(key) : undefined);
    if (!correlationId) {
      this.hold(key, span);
      return;
    }
    span.setAttribute(ATTR.CORRELATION, correlationId);
    if (ctx && (!fromBaggage || fromBaggage === ctx.correlationId)) {
      if (ctx.principal?.tenantId) span.setAttribute(ATTR.TENANT, ctx.principal.tenantId);
      if (ctx.runId) span.setAttribute(ATTR.RUN, ctx.runId);
    }
    this.bind(key, correlationId);
  }

  /**
   * PostgreSQL's error messages name tables, constraints and values (`invalid input syntax for type
   * uuid: "…"`): a span names a database error by its SQLSTATE only. The pg instrumentation copies the
   * message into its span's status (its exception event it already reduces to the SQLSTATE, which is
   * where the code is read when it set no `error.type`); Express's instrumentation records the error a
   * route hands to `next()` — a request that failed on the database — as an exception event with
   * PostgreSQL's message and a stack that starts with it, and that message as the status.
   */
  onEnding(span: Span): void {
    if (span.status.code !== SpanStatusCode.ERROR) return;
    if (span.instrumentationScope.name === PG_INSTRUMENTATION) {
      const code = span.attributes[ATTR_ERROR_TYPE];
      const fromEvent = span.events.map((e) => PG_EVENT_CODE.exec(String(e.attributes?.[EXCEPTION_MESSAGE] ?? ''))?.[1]).find(Boolean);
      span.setStatus({ code: SpanStatusCode.ERROR, message: databaseError(typeof code === 'string' ? code : (fromEvent ?? 'UNKNOWN')) });
      return;
    }
    let recorded: string | undefined;
    for (const event of span.events) {
      const attrs = event.attributes;
      const type = attrs?.[EXCEPTION_TYPE];
      if (event.name !== 'exception' || !attrs || typeof type !== 'string' || !SQLSTATE.test(type)) continue;
      const text = (recorded = databaseError(type));
      const message = attrs[EXCEPTION_MESSAGE];
      const stack = attrs[EXCEPTION_STACKTRACE];
      if (typeof stack === 'string') attrs[EXCEPTION_STACKTRACE] = typeof message === 'string' && message ? stack.split(message).join(text) : stack;
      attrs[EXCEPTION_MESSAGE] = text;
    }
    if (recorded) span.setStatus({ code: SpanStatusCode.ERROR, message: recorded });
  }

  onEnd(span: ReadableSpan): void {
    const key = this.heldAt.get(span as Span);
    if (key === undefined) return;
    this.heldAt.delete(span as Span);
    const held = this.pending.get(key);
    if (!held) return;
    held.delete(span as Span);
    if (held.size === 0) this.pending.delete(key);
  }

  /**
   * Tags the still-running spans held under `key` (a trace id, outside an inbound request) that
   * started before the correlation id was known.
   */
  bind(key: string, correlationId: string): void {
    this.remember(this.known, key, correlationId);
    const held = this.pending.get(key);
    if (!held) return;
    this.pending.delete(key);
    for (const s of held) {
      this.heldAt.delete(s);
      s.setAttribute(ATTR.CORRELATION, correlationId);
    }
  }

  /** Tags an inbound request's server span, and its spans that started before the id was known (the first middleware). */
  bindRequest(server: { spanContext(): { spanId: string }; setAttribute(key: string, value: string): unknown }, correlationId: string): void {
    server.setAttribute(ATTR.CORRELATION, correlationId);
    this.bind(server.spanContext().spanId, correlationId);
  }

  async forceFlush(): Promise<void> {}

  async shutdown(): Promise<void> {
    this.pending.clear();
    this.known.clear();
    this.inbound.clear();
  }

  /** A bounded memory of recent traces: past MAX_PENDING_TRACES the oldest is forgotten. */
  private remember<V>(map: Map<string, V>, traceId: string, value: V): void {
    if (!map.has(traceId) && map.size >= MAX_PENDING_TRACES) map.delete(map.keys().next().value!);
    map.set(traceId, value);
  }

  private hold(key: string, span: Span): void {
    let held = this.pending.get(key);
    if (!held) {
      if (this.pending.size >= MAX_PENDING_TRACES) this.pending.clear();
      held = new Set();
      this.pending.set(key, held);
    }
    held.add(span);
    this.heldAt.set(span, key);
  }
}

/** The id of the inbound request's server span that `ctx` runs in (the HTTP instrumentation's RPC metadata), if in trace `traceId`. */
function requestOf(ctx: Context, traceId: string): string | undefined {
  const sc = getRPCMetadata(ctx)?.span?.spanContext();
  return sc && sc.traceId === traceId ? sc.spanId : undefined;
}

/**
 * The run's correlation id as the only baggage of `ctx` (the context a run job is enqueued in):
 * whatever baggage the caller's request brought (an approver's, a client's) does not travel on.
 */
export function withRunCorrelation(ctx: Context, correlationId: string): Context {
  // Baggage carries the id into the worker with the job; the context key tells this process's spans
  // that the platform, not a caller, set it.
  return withRequestCorrelation(ctx, correlationId).setValue(RUN_CORRELATION, correlationId);
}

/**
 * A request's validated correlation id as the only baggage of `ctx` (correlationMiddleware): what the
 * request enqueues carries it into the worker, where it tags the job's spans; the caller's `baggage`
 * header is dropped. Unlike withRunCorrelation it does not mark the id as the run's: in this process
 * the request's spans take the id from the request's context.
 */
export function withRequestCorrelation(ctx: Context, correlationId: string): Context {
  return propagation.setBaggage(ctx, propagation.createBaggage({ [CORRELATION_BAGGAGE_KEY]: { value: correlationId } }));
}

let active: CorrelationSpanProcessor | undefined;

/** The processor register.ts installed (none when telemetry is off). */
export function installCorrelationProcessor(): CorrelationSpanProcessor {
  active = new CorrelationSpanProcessor();
  return active;
}

/**
 * Called where an inbound request's correlation id is first known (correlationMiddleware), with the
 * context it runs in: tags the request's server span (the HTTP instrumentation's, not the active span,
 * which Express's instrumentation makes the middleware's own) and its spans that started before. A
 * no-op with telemetry off.
 */
export function bindRequestCorrelation(ctx: Context, correlationId: string): void {
  const server = getRPCMetadata(ctx)?.span;
  if (server && active) active.bindRequest(server, correlationId);
}
