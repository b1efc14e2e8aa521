import type { EntityManager } from '@mikro-orm/postgresql';
import type { Request, Response } from 'express';
import type { ZodType } from 'zod';
import type { Principal } from '../tenancy/jwt.ts';

export type HttpMethod = 'get' | 'post' | 'put' | 'patch' | 'delete';
export const MUTATING_METHODS: ReadonlySet<HttpMethod> = new Set(['post', 'put', 'patch', 'delete']);

export interface RouteResult<R = unknown> {
  status: number;
  body?: R;
  headers?: Record<string, string>;
}

export interface RouteContext<B = unknown, P = unknown, Q = unknown> {
  req: Request;
  res: Response;
  body: B;
  params: P;
  query: Q;
  principal: Principal;
  /** Tenant-bound entity manager, inside the route's transaction. */
  em: EntityManager;
  correlationId: string;
  requestId: string;
  /** Stable per submission: derived from the idempotency record (see idempotency.service.ts). */
  idempotencyHash: string;
  /** Work to run after the route's transaction commits (e.g. enqueueing): Postgres first, Redis second. */
  afterCommit(fn: () => Promise<void>): void;
  /**
   * Work that undoes, outside PostgreSQL, what the transaction did there if it does not commit: given
   * the error that ended it, so that it can tell a failure of the server from the handler's 4xx
   * (admission's refund of the rate budget, which a 4xx keeps spent).
   */
  onRollback(fn: (err: unknown) => Promise<void>): void;
  /** What the route's `prepare` returned (undefined without one). */
  prepared: unknown;
}

export interface RouteResponseDoc<R = unknown> {
  description: string;
  /** Required for a success (2xx): the body the handler returns, as the OpenAPI document publishes it. */
  schema?: ZodType<R>;
  /** Headers the handler always sends with this response, by their fixed value (e.g. `Cache-Control: no-store`): published as such. */
  headers?: Readonly<Record<string, string>>;
  /** The handler sends `Location` with this response: the resource created or accepted (published as required). */
  location?: boolean;
}

/** Abuse limits a route submits to (admission.ts): a rate and a cap, both answered with 429. */
export interface AdmissionControl {
  /**
   * Throws 429 when the tenant exceeds its submission rate or runs in flight. What it spends outside the
   * transaction (the rate budget in Redis) it may give back through `onRollback` if the transaction does
   * not commit, by the error that ended it (admission.ts: not after the handler's 4xx).
   */
  admit(em: EntityManager, tenantId: string, onRollback: (fn: (err: unknown) => Promise<void>) => void): Promise<void>;
}

/**
 * One declaration drives the Express router, the OpenAPI document and the readiness matrix. `R` is the
 * success body, inferred from the success response's `schema` only: a body the handler returns with a
 * missing or mistyped field fails the typecheck. (An extra field in an inline literal does not: build
 * the body as a value of the schema's type, e.g. `const body: RunPage = …`, and it does too.)
 */
export interface RouteDef<B = any, P = any, Q = any, R = any> {
  method: HttpMethod;
  /** Express path, e.g. /api/v1/golden-path/runs/:id */
  path: string;
  summary: string;
  tags: string[];
  /** Roles of which the principal needs at least one. */
  roles?: string[];
  /** Required for POST, PUT, PATCH and DELETE (defineRoute refuses one without): whether an Idempotency-Key must be sent. */
  idempotency?: 'required' | 'optional';
  body?: ZodType<B>;
  params?: ZodType<P>;
  query?: ZodType<Q>;
  /**
   * The router admits the request through it first in the route's transaction, before the handler;
   * the OpenAPI document names the submission limits under 429 for exactly those routes (every route
   * can answer 429 for the tenant's share of in-flight requests).
   */
  admission?: AdmissionControl;
  /**
   * Slow work on tenant input (a DNS lookup), run before the request takes one of its tenant's
   * connection places (API_MAX_DB_CONNECTIONS_PER_TENANT, tenant-db-share.ts) and before its
   * transaction, so that it holds neither meanwhile; its result reaches the handler as `prepared`. A
   * keyed request whose key is already settled (a replay, or 422) is answered before it (router.ts:
   * one short read of the key), so it is not run for those; it may still run for a request whose key
   * another request takes meanwhile (the handler does not run then): it must change nothing, and the
   * handler, not it, decides what its result means (e.g. a 422). `read` is for a short
   * read of its own that says whether the slow work is needed at all: it runs `fn` in a transaction of
   * its own (the request's tenant-bound manager) within one of the tenant's places, given back when it
   * ends; never hold it across the slow work.
   */
  prepare?(ctx: { body: B; params: P; principal: Principal; read<T>(fn: (em: EntityManager) => Promise<T>): Promise<T> }): Promise<unknown>;
  responses: Record<number, RouteResponseDoc<R>>;
  /**
   * Runs in the route's transaction; an error it throws rolls that back. A 4xx it throws (a 429 aside)
   * is stored under the Idempotency-Key as the request's answer, except a `ValidationError`, which
   * releases the key as a 5xx does (a retry runs again, router.ts): throw one only before any effect the
   * rollback does not undo (a Redis write, a call out, a commit of its own); such effects go in `afterCommit`.
   */
  handler(ctx: RouteContext<B, P, Q>): Promise<RouteResult<NoInfer<R>>>;
}

export function defineRoute<B = undefined, P = Record<string, never>, Q = Record<string, never>, R = unknown>(def: RouteDef<B, P, Q, R>): RouteDef<B, P, Q, R> {
  const label = `${def.method.toUpperCase()} ${def.path}`;
  if (MUTATING_METHODS.has(def.method) && !def.idempotency) {
    throw new Error(`${label}: mutating routes must declare idempotency 'required' or 'optional'`);
  }
  for (const [code, r] of Object.entries(def.responses)) {
    // 204 No Content has no body to describe.
    if (Number(code) >= 200 && Number(code) < 300 && Number(code) !== 204 && !r.schema) throw new Error(`${label}: the ${code} response must declare the schema of its body`);
  }
  return def;
}
