import { DriverException } from '@mikro-orm/core';
import { NoAnswerError, raisedByPlatformDatabase } from '../db/coalescing-client.ts';

/**
 * One error base for the platform. Routes and steps throw; exactly two mappers turn errors into
 * outcomes: `toProblem` (HTTP, RFC 9457) and `toJobOutcome` (BullMQ retry or UnrecoverableError).
 */
export interface AppErrorOptions {
  status?: number;
  retryable?: boolean;
  cause?: unknown;
  detail?: string;
  /** Extra members for the problem+json body (safe to show to clients). */
  extensions?: Record<string, unknown>;
  headers?: Record<string, string>;
}

export class AppError extends Error {
  readonly code: string;
  readonly status: number;
  readonly retryable: boolean;
  readonly detail: string | undefined;
  readonly extensions: Record<string, unknown>;
  readonly headers: Record<string, string>;

  constructor(code: string, message: string, options: AppErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.status = options.status ?? 500;
    this.retryable = options.retryable ?? this.status >= 500;
    this.detail = options.detail;
    this.extensions = options.extensions ?? {};
    this.headers = options.headers ?? {};
  }
}

export class ValidationError extends AppError {
  constructor(message: string, errors: Array<{ path: string; message: string }> = [], status = 400) {
    super('validation_failed', message, { status, retryable: false, extensions: { errors } });
  }
}
export class UnauthorizedError extends AppError {
  constructor(detail = 'A valid bearer token is required.', cause?: unknown) {
    super('unauthorized', 'Unauthorized', { status: 401, retryable: false, detail, cause, headers: { 'WWW-Authenticate': 'Bearer' } });
  }
}
export class ForbiddenError extends AppError {
  constructor(detail: string) {
    super('forbidden', 'Forbidden', { status: 403, retryable: false, detail });
  }
}
export class NotFoundError extends AppError {
  constructor(what = 'resource') {
    super('not_found', 'Not Found', { status: 404, retryable: false, detail: `The ${what} does not exist.` });
  }
}
export class ConflictError extends AppError {
  constructor(code: string, detail: string, options: Omit<AppErrorOptions, 'status' | 'detail'> = {}) {
    super(code, 'Conflict', { retryable: false, ...options, status: 409, detail });
  }
}
export class ServiceUnavailableError extends AppError {
  constructor(detail: string, cause?: unknown, retryAfterSeconds = 5) {
    super('service_unavailable', 'Service Unavailable', {
      status: 503,
      retryable: true,
      detail,
      cause,
      headers: { 'Retry-After': String(retryAfterSeconds) },
    });
  }
}
/** A step or job that must not be retried (bad input, a security refusal, non-determinism). */
export class PermanentError extends AppError {
  constructor(code: string, message: string, cause?: unknown) {
    super(code, message, { status: 422, retryable: false, cause });
  }
}

/** Normalises anything thrown into an Error (graphile-worker's coerceError). */
export function coerceError(e: unknown): Error {
  if (e instanceof Error) return e;
  return new Error(typeof e === 'string' ? e : `non-error thrown: ${safeStringify(e)}`);
}

function safeStringify(v: unknown): string {
  try {
    return JSON.stringify(v);
  } catch {
    return String(v);
  }
}

const TRANSIENT_PG_CODES = new Set(['08000', '08003', '08006', '08001', '08004', '57P01', '57P02', '57P03', '53300', '40001', '40P01']);
const TRANSIENT_NET_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN']);

/** PostgreSQL's query_canceled (a statement timeout) and lock_not_available (a lock timeout). */
const TIMEOUT_PG_CODES = new Set(['57014', '55P03']);

/**
 * True when a statement was cancelled for waiting too long: DATABASE_STATEMENT_TIMEOUT, most often
 * spent waiting for a row lock another transaction holds, or a lock timeout. The request's
 * transaction rolled back; the API answers 503 with Retry-After (to-problem.ts), not 500.
 */
export function isDatabaseTimeout(e: unknown): boolean {
  for (let cur: unknown = e, depth = 0; cur && depth < 6; depth++) {
    const c = cur as { code?: unknown; cause?: unknown };
    if (typeof c.code === 'string' && TIMEOUT_PG_CODES.has(c.code)) return true;
    cur = c.cause;
  }
  return false;
}

/**
 * Redis error replies (ioredis's ReplyError, its message led by the code) that say Redis cannot serve
 * now, not that the command was wrong: LOADING (loading its dataset after a restart), READONLY (a
 * replica, as the old primary becomes after a failover), BUSY (a script or function past
 * busy-reply-threshold), MASTERDOWN (a replica cut off from its primary), TRYAGAIN and CLUSTERDOWN
 * (Cluster resharding or without a quorum), NOREPLICAS (too few replicas for min-replicas-to-write),
 * and OOM: maxmemory reached under noeviction (which BullMQ requires). OOM can last until an operator
 * acts, but it is still no fault of the request: it succeeds once memory is freed (jobs end and are
 * removed, maxmemory raised), so the client is told to retry (503) and a step is not failed for it.
 * The code is followed by a space: BUSYKEY and BUSYGROUP are the command's own fault.
 */
const TRANSIENT_REDIS_REPLY = /^(LOADING|READONLY|BUSY|MASTERDOWN|TRYAGAIN|CLUSTERDOWN|NOREPLICAS|OOM) /;

/** Messages of node-postgres (and of PostgreSQL itself) when the database or the connection to it is lost. */
const PG_CONNECTION_MESSAGE = /Connection terminated|terminating connection|the database system is (starting up|shutting down)|Client has encountered a connection error|timeout exceeded when trying to connect/i;
/** ioredis's, when Redis is down and the offline queue is off (producers fail fast), or a command timed out. */
const REDIS_CONNECTION_MESSAGE = /Stream isn't writeable|Connection is closed|enableOfflineQueue options is false|Command timed out/i;

type Link = { code?: unknown; message?: unknown; cause?: unknown; name?: unknown; previousErrors?: unknown };

/**
 * What one error of a chain says is unavailable: `backend` when only the database's or Redis's client
 * raises it (a PostgreSQL SQLSTATE, a MikroORM ConnectionException, node-postgres's and ioredis's own
 * messages and errors, the coalescing client's NoAnswerError), `network` when any network call may (a
 * socket's ECONNREFUSED, ENOTFOUND, ETIMEDOUT: a step's fetch to a partner raises them as our database
 * client does), undefined when neither.
 */
function unavailability(c: Link): 'backend' | 'network' | undefined {
  if (typeof c.code === 'string' && TRANSIENT_PG_CODES.has(c.code)) return 'backend';
  if (c.name === 'ConnectionException' || c.name === 'MaxRetriesPerRequestError' || c.name === 'NoAnswerError') return 'backend';
  if (c.name === 'ReplyError' && typeof c.message === 'string') {
    if (TRANSIENT_REDIS_REPLY.test(c.message)) return 'backend';
    // A MULTI refused as a whole (EXECABORT): ioredis keeps the replies that made Redis discard it.
    if (Array.isArray(c.previousErrors) && c.previousErrors.some((p) => TRANSIENT_REDIS_REPLY.test(String((p as { message?: unknown })?.message)))) return 'backend';
  }
  if (typeof c.message === 'string' && (REDIS_CONNECTION_MESSAGE.test(c.message) || PG_CONNECTION_MESSAGE.test(c.message))) return 'backend';
  if (typeof c.code === 'string' && TRANSIENT_NET_CODES.has(c.code)) return 'network';
  if (typeof c.message === 'string' && /connect ECONNREFUSED/i.test(c.message)) return 'network';
  return undefined;
}

/** True when an error says the database, Redis (or the network to them) is unavailable rather than the request being wrong. */
export function isConnectivityError(e: unknown): boolean {
  for (let cur: unknown = e, depth = 0; cur && depth < 6; depth++) {
    if (unavailability(cur as Link)) return true;
    cur = (cur as Link).cause;
  }
  return false;
}

/**
 * True when an error a step threw says the platform's own database is unavailable, told by who raised
 * it, never by what its text says: only from the first error of its chain that the platform's database
 * client raised — MikroORM's DriverException (the entity manager's own methods, `em.execute`, `find`,
 * `flush`, wrap every error of their queries in one: it copies the driver's `code` and message, and may carry the driver's error as its cause), the
 * coalescing client's NoAnswerError, or any error a connection of the platform's pools raised (what a
 * step's query through `em.getConnection()`, a query builder or Kysely gets, unconverted:
 * raisedByPlatformDatabase) — down, is the chain asked what isConnectivityError asks (a network
 * error too, as that client raised it). A step's own call out (a partner's API that refuses
 * connections, a dead host, its own database or Redis) raises errors of neither, however the step wraps
 * them, and its message may quote any client's words ('Connection terminated unexpectedly', 'Connection
 * is closed', a SQLSTATE of a partner's database): its failure, not an outage. An ioredis error a
 * step throws is taken for its own Redis's: the one call of the platform's Redis a step makes (the
 * approval step's SLA timer, SlaScheduler.schedule) catches its failure and never throws it (ADR 0002).
 */
export function isBackendUnavailable(e: unknown): boolean {
  return platformSays(e, (c) => unavailability(c) !== undefined);
}

/**
 * isDatabaseTimeout told by who raised it, as isBackendUnavailable tells an outage: a statement or lock
 * timeout (57014, 55P03) of the platform's own database, never a SQLSTATE a workflow's code quotes or
 * copies from a partner's database.
 */
export function isBackendTimeout(e: unknown): boolean {
  return platformSays(e, (c) => typeof c.code === 'string' && TIMEOUT_PG_CODES.has(c.code));
}

/** Whether `says` holds for an error of the chain from the first one the platform's database client raised on (see isBackendUnavailable). */
function platformSays(e: unknown, says: (c: Link) => boolean): boolean {
  let platform = false;
  for (let cur: unknown = e, depth = 0; cur && depth < 6; depth++) {
    platform ||= cur instanceof DriverException || cur instanceof NoAnswerError || raisedByPlatformDatabase(cur);
    if (platform && says(cur as Link)) return true;
    cur = (cur as Link).cause;
  }
  return false;
}
