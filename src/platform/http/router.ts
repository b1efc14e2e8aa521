import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import { z } from 'zod';
import type { EntityManager, MikroORM } from '@mikro-orm/postgresql';
import type { Logger } from 'pino';
import { AppError, ServiceUnavailableError, ValidationError } from '../errors/app-error.ts';
import { toProblem } from '../errors/to-problem.ts';
import { authenticate, type TokenRefusal } from '../tenancy/auth.middleware.ts';
import type { Principal, TokenVerifier } from '../tenancy/jwt.ts';
import { answerClaim, idempotencyMiddleware, type IdempotencyMetrics, type IdempotencyState } from '../idempotency/idempotency.middleware.ts';
import { REPLAYABLE_HEADERS, isLeaseLost, type ClaimInput, type IdempotencyRecord, type IdempotencyService, type PendingClaim } from '../idempotency/idempotency.service.ts';
import { withPrelude } from '../db/coalescing-client.ts';
import { MUTATING_METHODS, type RouteDef, type RouteResult } from './route.ts';
import { canonicalParams, parseOrThrow } from './validation.ts';
import { PROBLEM_CONTENT_TYPE } from './problem.middleware.ts';
import { refuseInvalidUtf8, rejectUnstorableText, withoutQuotedBody } from './json-text.ts';
import { tenantInFlightLimit } from './tenant-inflight.ts';
import { startHandlerWork } from './load-shed.ts';
import type { TenantConnectionShare } from './tenant-db-share.ts';
import { decodes, literalSegmentGuards, routeTemplate } from './method-not-allowed.ts';
import { routeLabel, TooManyRequestsError, type OnRefused } from './refusals.ts';

export interface RouterDeps {
  orm: MikroORM;
  verifier: TokenVerifier;
  idempotency: IdempotencyService;
  logger: Logger;
  idempotencyMetrics?: IdempotencyMetrics;
  /** The largest JSON body a mutating route reads (BODY_LIMIT); larger ones answer 413. */
  bodyLimit?: string;
  /** A tenant's share of this process's in-flight requests (API_MAX_INFLIGHT_PER_TENANT); 0 or unset = no cap. */
  maxInFlightPerTenant?: number;
  /** Counts requests a tenant limit refused (dealix_requests_refused_total). */
  onRefused?: OnRefused;
  /** Refuses a verified token the server has withdrawn: an operator token signed out or exchanged by a dashboard link (ADR 0017). Required: a router built without it would accept them. */
  refuseToken: TokenRefusal;
  /** A tenant's share of this process's database connections (API_MAX_DB_CONNECTIONS_PER_TENANT); unset = no share. */
  connectionShare?: TenantConnectionShare;
}

/**
 * Builds the Express router from route declarations. Every route gets, in order: (with path parameters)
 * the literal-segment guard (method-not-allowed.ts) → authenticate → the
 * tenant's in-flight cap → (POST/PUT/PATCH/DELETE) read the JSON body → validate → (POST/PUT/PATCH/DELETE) idempotency → handler. The body is
 * read only once the caller is known and the route exists: without a valid token the answer is 401
 * and an unknown path 404, whatever the body. The handler runs in one tenant-bound transaction; for
 * an idempotent request its final response is stored in that same transaction. A route that declares
 * `admission` is admitted (the tenant's limits, 429) first in that transaction, before its handler.
 * A route's `prepare` (slow work on tenant input, e.g. DNS, and at most a short read of its own) runs before that;
 * a keyed request to such a route whose key is already settled is answered from the key (a replay, or 422) before it.
 * The handler's work (transaction, the key's settlement) holds one of the tenant's share of the
 * process's database connections (tenant-db-share.ts): past its share a tenant's request waits for one
 * without a connection, and is answered 503 if none comes in time. `prepare` holds none while it waits
 * (its short read takes one for the read only): a tenant's slow DNS does not keep its other requests waiting.
 */
export function buildRouter(routes: RouteDef[], deps: RouterDeps): Router {
  const router = express.Router();
  const tenantCap = tenantInFlightLimit(deps.maxInFlightPerTenant ?? 0, deps.onRefused);
  const literalSegmentGuard = literalSegmentGuards(routes);
  // A malformed body's parse error no longer quotes it: Express's instrumentation records it on the span (json-text.ts).
  // A UTF-8 body's bytes are checked before they are decoded (json-text.ts): decoding alone would read bad bytes as U+FFFD.
  const readBody = [
    withoutQuotedBody(express.json({ limit: deps.bodyLimit ?? '64kb', strict: true, type: ['application/json', 'application/*+json'], verify: refuseInvalidUtf8 })),
    rejectUnstorableText,
  ];
  for (const def of routes) {
    const mutating = MUTATING_METHODS.has(def.method);
    const chain: Array<(req: Request, res: Response, next: NextFunction) => unknown> = [
      // A path id that is another route's literal segment (`GET …/runs/cancel`): 405, before the token.
      ...(def.params ? [literalSegmentGuard(def)] : []),
      authenticate(deps.verifier, deps.orm, deps.logger, def.roles, deps.refuseToken),
      tenantCap(routeLabel(def)),
      ...(mutating ? readBody : []),
      validate(def),
    ];
    if (mutating) {
      chain.push(idempotencyMiddleware(deps.idempotency, { method: def.method, path: def.path, required: def.idempotency === 'required' }));
    }
    chain.push(runHandler(def, deps));
    router[def.method](def.path, ...chain);
  }
  router.use(undecodableParam(routes));
  return router;
}

/**
 * Express decodes a route's path parameters while matching it, and a parameter that is not valid
 * percent-encoded UTF-8 (`%E0%A4%A`, `%FF`) fails there with a bare URIError before any of the
 * route's middleware runs. It is a malformed id like any other (docs/api.md): 404 validation_failed
 * naming the parameter, not an undocumented 400.
 */
function undecodableParam(routes: RouteDef[]) {
  const patterns = routes.filter((def) => def.path.includes('/:')).map((def) => routeTemplate(def.path));
  return function undecodable(err: unknown, req: Request, _res: Response, next: NextFunction): void {
    if (!(err instanceof URIError)) return next(err);
    for (const { names, re } of patterns) {
      const values = re.exec(req.path)?.slice(1) ?? [];
      const bad = names.find((_name, i) => values[i] !== undefined && !decodes(values[i]!));
      if (bad) return next(new ValidationError('Invalid path parameters', [{ path: bad, message: 'not valid percent-encoded UTF-8' }], 404));
    }
    next(err);
  };
}

/** The body of a mutating route that declares none: nothing, or an empty JSON object (which many clients send by default). */
const NO_BODY = z.strictObject({});

/** The query of a route that declares none. */
const NO_QUERY = z.strictObject({});

const unsupportedMediaType = (detail: string) => new AppError('unsupported_media_type', 'Unsupported Media Type', { status: 415, retryable: false, detail });

/** Whether the request carries body bytes (an empty body, `Content-Length: 0`, does not). */
const sendsBytes = (req: Request) => req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) > 0;

function validate(def: RouteDef) {
  return function validateRequest(req: Request, res: Response, next: NextFunction): void {
    try {
      if (MUTATING_METHODS.has(def.method)) {
        const json = req.is(['application/json', 'application/*+json']);
        // A request without body bytes (none, or `Content-Length: 0`, whatever its type) has no body to
        // refuse for its type: a route that needs one fails the body's validation instead (422).
        if (json === false && sendsBytes(req)) {
          throw unsupportedMediaType(def.body ? 'Send the body as application/json.' : 'This operation takes no body: send none (or an empty JSON object).');
        }
      }
      res.locals.params = def.params ? canonicalParams(def.params, parseOrThrow(def.params, req.params, 'path parameters', 404)) : req.params;
      // A route without query parameters takes none: one sent is refused (400), never ignored (docs/api.md).
      res.locals.query = parseOrThrow(def.query ?? NO_QUERY, req.query, 'query parameters');
      // A route whose body is optional (rotate-secret) reads none as `{}`, as a route without a body
      // does: no body, `{}` and the defaults spelled out are one request under one Idempotency-Key.
      if (def.body) res.locals.body = parseOrThrow(def.body, req.body === undefined && def.body.safeParse({}).success ? {} : req.body, 'request body', 422);
      // A route without a body refuses one rather than ignore it (docs/api.md): its fields are unknown fields.
      else if (req.body !== undefined) parseOrThrow(NO_BODY, req.body, 'request body: this operation takes no body', 422);
      next();
    } catch (e) {
      next(e);
    }
  };
}

/** What a route's `prepare` gave: its result, or what it threw (thrown again where the handler would run, so that a keyed request settles its key as for any handler error). */
type Prepared = { value: unknown } | { error: unknown };

/** A prepare's read refused a place of the tenant's share (or its client left while it waited): answered as the share refuses, nothing claimed. */
class ShareRefusedError extends ServiceUnavailableError {}

const shareRefusal = (share: TenantConnectionShare) => new ShareRefusedError(`The tenant already has ${share.share} requests using the database on this API instance. Retry after the indicated delay.`, undefined, 1);

function runHandler(def: RouteDef, deps: RouterDeps) {
  const share = deps.connectionShare;
  const route = routeLabel(def);
  if (!def.prepare) {
    // A route without `prepare` (nearly all): straight to the share's place, no step more per request than before.
    return async function handle(req: Request, res: Response, next: NextFunction): Promise<void> {
      // The in-flight slots are held until this work ends, even if the client hangs up meanwhile.
      const work = () => handleRequest(def, deps, req, res, next);
      await startHandlerWork(res, share ? () => withConnectionShare(share, route, deps, res, next, work) : work);
    };
  }
  return async function handlePrepared(req: Request, res: Response, next: NextFunction): Promise<void> {
    // The in-flight slots are held until this work ends, even if the client hangs up meanwhile.
    await startHandlerWork(res, async () => {
      // A keyed request whose key is settled (a replay, or 422) is answered from it before `prepare`: a replay
      // needs nothing of what `prepare` finds (a webhook URL's DNS), and must not wait for it. One short read,
      // a place of the share for the read only; a key free or in progress goes on as before (the claim decides).
      if (await answeredFromKey(deps, route, res, next)) return;
      // First, before any place of the share is taken: slow work on tenant input (DNS) holds none (route.ts).
      const prepared = await prepare(def, deps, route, res);
      // Gone meanwhile: not run, not answered (as a request whose client left while waiting for a place).
      if (res.closed && !res.writableFinished) return;
      if ('error' in prepared && prepared.error instanceof ShareRefusedError) return next(prepared.error);
      const work = () => handleRequest(def, deps, req, res, next, prepared);
      return share ? withConnectionShare(share, route, deps, res, next, work) : work();
    });
  };
}

/**
 * Answers a keyed request of a route with `prepare` from its key when the key is settled (answerClaim:
 * the stored outcome, or 422); true when answered (or the client left meanwhile, or the read failed:
 * passed on to `next`), false to go on. Nothing is claimed: a refusal still stores nothing.
 */
async function answeredFromKey(deps: RouterDeps, route: string, res: Response, next: NextFunction): Promise<boolean> {
  const input = (res.locals.idempotency as IdempotencyState | undefined)?.input;
  if (!input) return false;
  try {
    const settled = await readInShare(deps, route, res)((tx) => deps.idempotency.settled(tx, input));
    if (res.closed && !res.writableFinished) return true;
    return settled ? answerClaim(res, settled, deps.idempotencyMetrics) : false;
  } catch (e) {
    // The 422 (mismatch), the share's 503, or the read's own failure, answered by the problem handler; gone meanwhile
    // (it left the share's wait): not answered, as the handler's work is not.
    if (!(res.closed && !res.writableFinished)) next(e);
    return true;
  }
}

/** A short read for a request outside its handler's work: it takes a place of the tenant's share for the read only, waiting for one as the handler's work does. */
function readInShare(deps: RouterDeps, route: string, res: Response) {
  const share = deps.connectionShare;
  const em = res.locals.em as EntityManager;
  const principal = res.locals.principal as Principal;
  return async <T>(fn: (tx: EntityManager) => Promise<T>): Promise<T> => {
    if (!share) return em.transactional(fn);
    const entered = await enterShare(share, principal.tenantId, res);
    if (entered === 'refused') deps.onRefused?.('tenant_db_connections', route);
    if (entered !== 'held') throw shareRefusal(share);
    try {
      return await em.transactional(fn);
    } finally {
      share.give(principal.tenantId);
    }
  };
}

/**
 * Runs the route's `prepare` outside the tenant's share; its short read (`read`) takes a place of the
 * share for the read only, waiting for one as the handler's work does.
 */
async function prepare(def: RouteDef, deps: RouterDeps, route: string, res: Response): Promise<Prepared> {
  const principal = res.locals.principal as Principal;
  const read = readInShare(deps, route, res);
  try {
    return { value: await def.prepare!({ body: res.locals.body, params: res.locals.params, principal, read }) };
  } catch (error) {
    return { error };
  }
}

type Entered = 'held' | 'refused' | 'gone';

/**
 * Takes one of the tenant's places of `share`: 'held' (give it back when done), 'refused' (none came in
 * the wait), or 'gone' (the client hung up meanwhile: the request left the wait at once, and holds nothing).
 * Under the share, 'held' at once, not a promise: no await more on the hot path.
 */
function enterShare(share: TenantConnectionShare, tenantId: string, res: Response): Entered | Promise<Entered> {
  const waiting = share.take(tenantId);
  if (!waiting) return 'held';
  return waitForPlace(share, tenantId, res, waiting);
}

async function waitForPlace(share: TenantConnectionShare, tenantId: string, res: Response, waiting: Promise<boolean>): Promise<Entered> {
  // A client that hangs up while its request waits: the request leaves the wait then, not when a place
  // or the 5 s come, so it holds its in-flight slots no longer (releaseWhenDone: the work ends now).
  const left = () => {
    if (!res.writableFinished) share.leave(tenantId, waiting);
  };
  res.once('close', left);
  const granted = await waiting;
  res.off('close', left);
  if (res.closed && !res.writableFinished) {
    // Gone: a place handed to it goes on to the next.
    if (granted) share.give(tenantId);
    return 'gone';
  }
  return granted ? 'held' : 'refused';
}

/**
 * The handler's work within the tenant's share of the process's database connections (ADR 0012,
 * amendment). Under its share, taken and given back in process: no await more than the handler's own.
 * Past it, the request waits here holding no connection; a request still without one after the wait
 * (CONNECTION_BOUNDS, as long as the pool's own wait) is refused as load shedding is (503, Retry-After)
 * before anything of it reached the database — its idempotency key is not claimed, its tenant's limits
 * not counted — and one whose client hangs up meanwhile leaves the wait at once, freeing its slots, and
 * is not run (startHandlerWork: no answer can reach it, a keyed retry runs it).
 */
function withConnectionShare(share: TenantConnectionShare, route: string, deps: RouterDeps, res: Response, next: NextFunction, work: () => Promise<void>): Promise<void> {
  const tenantId = (res.locals.principal as Principal).tenantId;
  const entered = (how: Entered): Promise<void> | undefined => {
    // Gone: not run, not answered, not counted as refused.
    if (how === 'gone') return;
    if (how === 'refused') {
      deps.onRefused?.('tenant_db_connections', route);
      return void next(shareRefusal(share));
    }
    return work().finally(() => share.give(tenantId));
  };
  const how = enterShare(share, tenantId, res);
  return typeof how === 'string' ? Promise.resolve(entered(how)) : how.then(entered);
}

async function handleRequest(def: RouteDef, deps: RouterDeps, req: Request, res: Response, next: NextFunction, prepared?: Prepared): Promise<void> {
  const idem = res.locals.idempotency as IdempotencyState | undefined;
  try {
    if (!idem?.pending) {
      await execute(def, deps, req, res, next, { hash: idem?.hash ?? '' }, prepared);
      return;
    }
    // A keyed request: the claim travels with the handler's first statements.
    if ((await execute(def, deps, req, res, next, { pending: idem.pending, hash: idem.pending.hash, ...(idem.input ? { input: idem.input } : {}) }, prepared)) !== 'key-taken') return;
    // The key was there: what it holds decides (replay, 422, 409), or this request takes it over
    // (a dead attempt's lease ran out, the key passed its TTL, or it was released meanwhile).
    const claim = await deps.idempotency.claim(res.locals.em as EntityManager, idem.input!);
    if (answerClaim(res, claim, deps.idempotencyMetrics) || claim.outcome !== 'claimed') return;
    res.locals.idempotency = { record: claim.record, hash: claim.hash } satisfies IdempotencyState;
    await execute(def, deps, req, res, next, { record: claim.record, hash: claim.hash }, prepared);
  } catch (e) {
    next(e);
  }
}

type Claim = { hash: string; record?: IdempotencyRecord; pending?: PendingClaim; input?: ClaimInput };

/**
 * Runs the handler in one tenant transaction; for a claimed key its final response is stored in that
 * transaction (a 5xx releases the key instead). With a pending claim, the claim is sent ahead of the
 * transaction's first statements; 'key-taken' means it found the key already there and nothing of
 * the handler ran.
 */
async function execute(def: RouteDef, deps: RouterDeps, req: Request, res: Response, next: NextFunction, claim: Claim, prep?: Prepared): Promise<'done' | 'key-taken'> {
  const em = res.locals.em as EntityManager;
  const afterCommit: Array<() => Promise<void>> = [];
  const onRollback: Array<(err: unknown) => Promise<void>> = [];
  let record = claim.record;
  let result: RouteResult;
  try {
    // What the route's `prepare` gave, before the share's place (runHandler): what it threw settles the key as a handler's error does.
    if (prep && 'error' in prep) throw prep.error;
    const prepared = prep?.value;
    const run = () =>
      em.transactional(async (tx) => {
        const principal = res.locals.principal as Principal;
        // Admission's statements are the transaction's first: a claim sent with them (a prelude) that
        // finds its key taken stops the request before it counts against the tenant's limits.
        if (def.admission) await def.admission.admit(tx, principal.tenantId, (fn) => onRollback.push(fn));
        const out = await def.handler({
          req,
          res,
          body: res.locals.body,
          params: res.locals.params,
          query: res.locals.query,
          principal,
          em: tx,
          correlationId: res.locals.correlationId as string,
          requestId: res.locals.requestId as string,
          idempotencyHash: claim.hash,
          afterCommit: (fn) => afterCommit.push(fn),
          onRollback: (fn) => onRollback.push(fn),
          prepared,
        });
        if (claim.pending) {
          // A handler that sent nothing yet sends the claim now.
          if (!claim.pending.prelude.sent) await tx.execute('select 1');
          const found = deps.idempotency.preludeOutcome(claim.pending);
          if (found.outcome !== 'claimed') throw new Error(`idempotency claim not settled (${found.outcome})`);
          record = found.record;
        }
        if (record) {
          if (isStoredOutcome(out.status)) await deps.idempotency.store(tx, record, { status: out.status, body: out.body, headers: replayHeaders(out) });
          else await deps.idempotency.release(tx, record);
        }
        return out;
      });
    result = claim.pending ? await withPrelude(claim.pending.prelude, run) : await run();
  } catch (err) {
    // The transaction did not commit: first undo what it spent outside PostgreSQL, whatever answer
    // follows; each hook is told why (admission keeps the rate budget spent by a handler's 4xx).
    await runAll(onRollback.map((fn) => () => fn(err)), (e) => deps.logger.warn({ err: e }, 'could not undo, after a rollback, what the transaction did outside PostgreSQL'));
    if (err instanceof TooManyRequestsError) deps.onRefused?.(err.reason, routeLabel(def));
    if (claim.pending && !claim.pending.prelude.sent && claim.input) {
      // The handler failed before its first statement, so before the claim: claim now, so that a
      // definitive answer is stored (and a key another request holds answers as it always does).
      const now = await deps.idempotency.claim(em, claim.input);
      if (now.outcome !== 'claimed') {
        answerClaim(res, now, deps.idempotencyMetrics); // replays (true), or throws 409/422
        return 'done';
      }
      record = now.record;
    } else if (claim.pending) {
      const found = deps.idempotency.preludeOutcome(claim.pending);
      if (found.outcome === 'taken') return 'key-taken';
      if (found.outcome === 'in_progress') answerClaim(res, { outcome: 'in_progress', retryAfterSeconds: 1 }, deps.idempotencyMetrics);
      if (found.outcome === 'claimed') record = found.record;
    }
    if (record && isLeaseLost(err)) {
      // The lease passed to a retry (or the key was forgotten) while this attempt ran: its work rolled
      // back, and it answers as the key now does (replays, or throws 409/422), not with a 500.
      answerClaim(res, await deps.idempotency.afterLeaseLost(em, record), deps.idempotencyMetrics);
      return 'done';
    }
    if (record) {
      // A definitive 4xx from the handler is the request's outcome and replays; a 5xx, a 429 or a body
      // the handler found invalid (validation_failed) releases the key.
      const { problem, headers } = toProblem(err, res.locals.requestId as string);
      try {
        if (err instanceof AppError && isStoredOutcome(problem.status) && !(err instanceof ValidationError)) {
          const { request_id: _omit, ...stored } = problem;
          const held = record;
          await em.transactional((tx) => deps.idempotency.store(tx, held, { status: problem.status, body: stored, headers: { ...headers, 'content-type': PROBLEM_CONTENT_TYPE } }));
        } else {
          await deps.idempotency.release(em, record);
        }
      } catch (e) {
        if (isLeaseLost(e)) {
          // A retry took the key over while this attempt ran: this 4xx is not the key's answer (the
          // retry's is), so it answers as the key now does (replays, or throws 409/422), as above.
          answerClaim(res, await deps.idempotency.afterLeaseLost(em, record), deps.idempotencyMetrics);
          return 'done';
        }
        deps.logger.warn({ err: e }, 'could not settle the idempotency key; its lease will expire');
      }
    }
    next(err);
    return 'done';
  }
  // Postgres already holds the truth; the recovery sweeper finishes what Redis missed.
  await runAll(afterCommit, (e) => deps.logger.error({ err: e }, 'after-commit action failed; the sweeper will repair it'));
  for (const [k, v] of Object.entries(result.headers ?? {})) res.setHeader(k, v);
  res.status(result.status);
  if (result.body === undefined) res.end();
  else res.json(result.body);
  return 'done';
}

/** Runs each action in order; one that fails is reported and the others still run. */
async function runAll(actions: Array<() => Promise<void>>, failed: (err: unknown) => void): Promise<void> {
  for (const fn of actions) {
    try {
      await fn();
    } catch (e) {
      failed(e);
    }
  }
}

/**
 * 429 and 5xx say "not now", not "this is the answer": they free the key for a retry instead of replaying.
 * So does a `validation_failed` the handler throws (a webhook URL refused after its DNS lookup): it is the
 * problem the schema's refusal is, which is never stored (Stripe: parameters that fail validation are not
 * saved), so a client that fixes the request may send it again under the same key, whichever found it.
 */
function isStoredOutcome(status: number): boolean {
  return status < 500 && status !== 429;
}

/** The headers stored with a response for its replays: a body's type only with a body (a 204 has none, and names none). */
function replayHeaders(result: RouteResult): Record<string, string> {
  const out: Record<string, string> = result.body === undefined ? {} : { 'content-type': 'application/json; charset=utf-8' };
  for (const [k, v] of Object.entries(result.headers ?? {})) {
    if ((REPLAYABLE_HEADERS as readonly string[]).includes(k.toLowerCase())) out[k.toLowerCase()] = v;
  }
  return out;
}
