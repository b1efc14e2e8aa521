import express, { type Express, type RequestHandler, type Router } from 'express';
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Config } from '../config/config.ts';
import type { TokenVerifier } from '../tenancy/jwt.ts';
import { adminAuth, operatorTokenRefusal } from './admin-auth.middleware.ts';
import type { TokenRefusal } from '../tenancy/auth.middleware.ts';
import { SlidingRateWindow } from './rate-window.ts';
import { OperatorSessions } from './operator-sessions.ts';
import { sendProblem } from './problem.middleware.ts';
import { AppError } from '../errors/app-error.ts';
import { redactUrl } from '../telemetry/attributes.ts';
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { ExpressAdapter } from '@bull-board/express';

export const BULL_BOARD_PATH = '/admin/queues';
const BOARD_QUEUES = 'dealixBullBoardQueues';
/** The window in which OPERATOR_LOGIN_MAX_FAILURES failed operator logins from one address are allowed. */
export const OPERATOR_LOGIN_WINDOW_MS = 15 * 60_000;

/**
 * Bull Board's two actions that write a job's data: *Add job* (`POST …/api/queues/:queue/add`) and
 * *Edit job data* (`PATCH …/api/queues/:queue/:job/update-data`). A job's data is what a worker acts on
 * in place of an API request — a run job names its tenant and run and may carry a new run's first step
 * input (ADR 0004), a maintenance job its task — so JSON typed there would skip the API's validation,
 * its Idempotency-Key and its binding of a tenant to the caller's token. Every job is made by the
 * platform from PostgreSQL (a submission, a retry, the sweeper); none needs writing by hand. Bull Board
 * 9 has no option to turn these two off while keeping retry, promote and clean (`readOnlyMode` turns
 * off all), so they are refused here, on every queue, whatever BULL_BOARD_READ_ONLY says. Matched by an
 * Express router with Bull Board's own paths and Express's default matching, as Bull Board's router
 * matches them: a hand-written pattern missed spellings Bull Board still routes (`…/API/queues/q/ADD`,
 * letter case being ignored there) and let them through.
 */
const JOB_WRITES = { post: '/api/queues/:queueName/add', patch: '/api/queues/:queueName/:jobId/update-data' } as const;

const jobWriteRefused = () =>
  new AppError('board_job_write_refused', 'Method Not Allowed', {
    status: 405,
    retryable: false,
    detail:
      "Bull Board does not add jobs or edit a job's data here: they would bypass the API's validation, idempotency and tenant binding. Submit or retry the run through the API; retry, promote and clean work on the jobs the platform made.",
  });

/**
 * The writes BULL_BOARD_READ_ONLY=false allows, as docs/operations.md names them: pausing and resuming
 * (one queue or all), retrying, promoting and cleaning (removing) jobs — each only on jobs the platform
 * made, and each repaired or harmless (PostgreSQL holds the truth; the sweeper re-enqueues a run whose
 * job is gone). Every other write Bull Board 9 offers is refused (boardActionRefused), so that a
 * release of Bull Board adding one does not add it here: changing a delayed job's delay or a job's
 * priority (an SLA timer moved a year out leaves its run waiting past its deadline, and the sweeper
 * sees only that the timer is there), editing, running or removing a Job Scheduler (the maintenance
 * schedulers are the platform's), a queue's global concurrency or rate limit (left in Redis, shown
 * nowhere else), emptying or obliterating a queue, removing a job's unprocessed children.
 */
const BOARD_ACTIONS = [
  '/api/queues/pause',
  '/api/queues/resume',
  '/api/queues/:queueName/pause',
  '/api/queues/:queueName/resume',
  '/api/queues/:queueName/retry/:queueStatus',
  '/api/queues/:queueName/promote',
  '/api/queues/:queueName/clean/:queueStatus',
  '/api/queues/:queueName/:jobId/retry',
  '/api/queues/:queueName/:jobId/promote',
  '/api/queues/:queueName/:jobId/clean',
];
/**
 * Bull Board's own files (its scripts, styles, images, translations: `express.static` under `/static`,
 * matched as Express matches it, letter case ignored), the same for every operator and holding no
 * queue's data. Sent `private, no-cache`, not Bull Board's `public, max-age=0`: the browser keeps them
 * and revalidates each (ETag, Last-Modified: a 304 without a body), and no shared cache keeps what sits
 * behind the dashboard's sign-in for whoever asks next. Every other answer — the page, the JSON API
 * (queues, job data naming a tenant and a run), a refusal — is `no-store`: neither the browser's cache
 * nor a proxy's keeps it, so nothing of it is left on an operator's disk or served after sign-out.
 */
const STATIC_FILE = /^\/static\//i;
const STATIC_CACHING = 'private, no-cache';
/** The methods that read (Bull Board's GET routes; HEAD and OPTIONS are answered from them). */
const READS = new Set(['GET', 'HEAD', 'OPTIONS']);

const boardActionRefused = () =>
  new AppError('board_action_refused', 'Method Not Allowed', {
    status: 405,
    retryable: false,
    detail:
      "This dashboard pauses and resumes queues and retries, promotes and cleans jobs, nothing else: changing a job's delay or priority, a Job Scheduler, a queue's concurrency or rate limit, or emptying or obliterating a queue would change what the platform relies on without its knowing.",
  });

/**
 * Bull Board for operators: every queue it is given (every workflow queue and the maintenance queue),
 * read-only unless BULL_BOARD_READ_ONLY=false, then allowing only BOARD_ACTIONS, and never adding a
 * job or editing a job's data (JOB_WRITES). It has no authentication of its own: mount it behind adminAuth. `basePath` must equal
 * the mount path or its assets and API calls miss.
 */
export function bullBoardRouter(queues: Iterable<Queue>, opts: { readOnly: boolean; basePath?: string; logger?: Logger }): { router: RequestHandler; queueNames: string[] } {
  const serverAdapter = new ExpressAdapter().setBasePath(opts.basePath ?? BULL_BOARD_PATH);
  const list = [...queues];
  createBullBoard({
    queues: list.map((q) => new BullMQAdapter(q, { readOnlyMode: opts.readOnly, allowRetries: !opts.readOnly })),
    serverAdapter,
    // The guard answers `<mount>/logout` (a sign-out form) before Bull Board sees it.
    options: { uiConfig: { boardTitle: 'Dealix queues', hideDocsLink: true, miscLinks: [{ text: 'Sign out', url: `${opts.basePath ?? BULL_BOARD_PATH}/logout` }] } },
  });
  // The adapter's router is an Express app of its own: it does not inherit the API's settings.
  const board = serverAdapter.getRouter() as Router & Partial<Pick<Express, 'disable'>>;
  board.disable?.('x-powered-by');
  // Its reads keep their ETag (the API's readETags wraps every GET's send); its writes get none, as the API's.
  board.disable?.('etag');
  const refuse: RequestHandler = (req, res) => {
    opts.logger?.warn({ security_event: 'board_job_write_refused', method: req.method, path: redactUrl(req.originalUrl), ip: req.ip }, 'Bull Board job write refused (add job / edit job data)');
    sendProblem(res, jobWriteRefused());
  };
  // A write matching none of BOARD_ACTIONS (with Bull Board's paths and Express's default matching, as
  // Bull Board's own router matches them) is refused; one matching is let through to Bull Board, whose
  // router finds an allowed action for it too (no refused route matches a path an allowed one does).
  const allowed = new WeakSet<object>();
  const gate = express
    .Router()
    .post(JOB_WRITES.post, refuse)
    .patch(JOB_WRITES.patch, refuse)
    .put(BOARD_ACTIONS, (req, _res, next) => {
      allowed.add(req);
      next('router');
    });
  const refuseAction: RequestHandler = (req, res) => {
    opts.logger?.warn({ security_event: 'board_action_refused', method: req.method, path: redactUrl(req.originalUrl), ip: req.ip }, 'Bull Board action refused (not one the dashboard allows)');
    sendProblem(res, boardActionRefused());
  };
  // Whatever the refusals do not answer goes on to Bull Board (an error to the app's handler).
  const router: RequestHandler = (req, res, next) => {
    res.setHeader('Cache-Control', STATIC_FILE.test(req.path) ? STATIC_CACHING : 'no-store');
    gate(req, res, (err?: unknown) => {
      if (err) return next(err);
      if (READS.has(req.method) || allowed.has(req)) return board(req, res, next);
      refuseAction(req, res, next);
    });
  };
  return { router, queueNames: list.map((q) => q.name) };
}

/**
 * The dashboard as mounted by the app: `app.use(path, ...handlers)` puts the tagged admin-auth guard
 * in front of Bull Board (two layers, so the readiness matrix sees the guard).
 */
export function operatorDashboard(deps: {
  queues: Iterable<Queue>;
  verifier: TokenVerifier;
  logger: Logger;
  /** Where failed operator logins, signed-out tokens and used `?token=` links are kept (every API process shares them). */
  redis: Redis;
  config: Pick<Config, 'BULL_BOARD_READ_ONLY' | 'OPERATOR_USER' | 'OPERATOR_PASSWORD' | 'OPERATOR_LOGIN_MAX_FAILURES' | 'QUEUE_PREFIX' | 'JWT_CLOCK_TOLERANCE'>;
}): { path: string; handlers: [RequestHandler, RequestHandler]; queueNames: string[]; refuseToken: TokenRefusal } {
  const { router, queueNames } = bullBoardRouter(deps.queues, { readOnly: deps.config.BULL_BOARD_READ_ONLY, basePath: BULL_BOARD_PATH, logger: deps.logger });
  const { OPERATOR_USER: user, OPERATOR_PASSWORD: password } = deps.config;
  const loginThrottle = { window: operatorLoginWindow(deps.redis, `${deps.config.QUEUE_PREFIX}:operator-login`), maxFailures: deps.config.OPERATOR_LOGIN_MAX_FAILURES };
  const sessions = operatorSessions(deps.redis, deps.config);
  const guard = adminAuth({ verifier: deps.verifier, logger: deps.logger, operator: user && password ? { user, password } : undefined, basePath: BULL_BOARD_PATH, loginThrottle, sessions });
  // The API's routes refuse the operator tokens the dashboard withdrew (signed out, a used link's) too.
  return { path: BULL_BOARD_PATH, handlers: [guard as RequestHandler, router], queueNames, refuseToken: operatorTokenRefusal(sessions, deps.logger) };
}

/**
 * Where the failed operator logins of each address are counted: the last OPERATOR_LOGIN_WINDOW_MS,
 * sliding (SlidingRateWindow), as docs/operations.md promises; `now` for tests.
 */
export function operatorLoginWindow(redis: Redis, keyPrefix: string, now?: () => number): SlidingRateWindow {
  return new SlidingRateWindow(redis, keyPrefix, OPERATOR_LOGIN_WINDOW_MS, now);
}

/** The dashboard's signed-out tokens and used `?token=` links, under the deployment's prefix. */
export function operatorSessions(redis: Redis, config: Pick<Config, 'QUEUE_PREFIX' | 'JWT_CLOCK_TOLERANCE'>): OperatorSessions {
  // The verifier accepts a token this long past its exp: its revocation must last as long.
  return new OperatorSessions(redis, `${config.QUEUE_PREFIX}:operator-session`, config.JWT_CLOCK_TOLERANCE / 1000);
}

/** Records which queues the app's dashboard shows (the readiness matrix compares them with the workflows). */
export function setBoardQueues(app: Express, names: string[]): void {
  app.locals[BOARD_QUEUES] = [...names];
}

/** The queue names registered in the app's Bull Board ([] when none is mounted). */
export function boardQueues(app: Express): string[] {
  return (app.locals[BOARD_QUEUES] as string[] | undefined) ?? [];
}
