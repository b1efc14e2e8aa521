import type { Request, Response } from 'express';
import type { MikroORM } from '@mikro-orm/postgresql';
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { PROBLEM_CONTENT_TYPE } from './problem.middleware.ts';
import { PROBLEM_TYPE_BASE } from '../errors/to-problem.ts';

export function liveness(_req: Request, res: Response): void {
  res.json({ status: 'ok' });
}

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<T>((_, rej) => (t = setTimeout(() => rej(new Error(`${what} timed out`)), ms)))]);
  } finally {
    clearTimeout(t);
  }
}

/**
 * `op`, but never twice at once: a call while the previous one still runs gets that one's outcome.
 * A probe that gives up on a check (its timeout) does not stop the check's statement, which keeps its
 * pool connection until it ends.
 */
function oneAtATime<T>(op: () => Promise<T>): () => Promise<T> {
  let running: Promise<T> | undefined;
  return () =>
    (running ??= Promise.resolve()
      .then(op)
      .finally(() => (running = undefined)));
}

/**
 * Readiness: PostgreSQL answers, Redis answers, migrations are current, and (the API) this process has
 * loaded the token revocation list once (ADR 0018). 503 problem+json naming what
 * is not. The endpoint is public (probes), so it says which check failed in fixed words; the
 * driver's own message (host names, addresses, role names) goes to the log only.
 *
 * Public and never shed (load-shed.ts), so a check runs once at a time however many probes ask:
 * probes that arrive while it runs share its outcome (each still answers within its timeout). Else
 * anonymous probes of a slow database — each left its statement running when it gave up — held every
 * connection of the pool, and tenants' requests failed with 503.
 */
export function readiness(deps: {
  orm: MikroORM;
  redis: Redis;
  logger?: Logger;
  stopping?: () => boolean;
  revocations?: { readonly isLoaded: boolean } | undefined;
  /** The queues whose pause and global limits are reported (never failing readiness: queuesCheck). */
  queues?: Iterable<QueueStateReader>;
}) {
  const failed = (check: string, detail: string) => (e: Error) => {
    deps.logger?.warn({ check, err: e.message }, 'readiness check failed');
    return { ok: false, detail };
  };
  const postgres = oneAtATime(() => deps.orm.em.getConnection().execute('select 1'));
  const redis = oneAtATime(() => deps.redis.ping());
  const pending = oneAtATime(() => deps.orm.migrator.getPending());
  const queues = [...(deps.queues ?? [])];
  const states = oneAtATime(() => Promise.all(queues.map(queueState)));
  return async (_req: Request, res: Response): Promise<void> => {
    const checks: Record<string, { ok: boolean; detail?: string; paused?: string[]; limited?: QueueLimits[] }> = {};
    // Stopping (SIGTERM, API_SHUTDOWN_DELAY): not ready, whatever the backends say, so the load balancer
    // takes this instance out while it still serves; nothing is checked.
    if (deps.stopping?.()) checks.shutdown = { ok: false, detail: 'shutting down' };
    else await Promise.all([
      withTimeout(postgres(), 2000, 'postgres')
        .then(() => (checks.postgres = { ok: true }))
        .catch((e: Error) => (checks.postgres = failed('postgres', 'unreachable or too slow')(e))),
      withTimeout(redis(), 2000, 'redis')
        .then(() => (checks.redis = { ok: true }))
        .catch((e: Error) => (checks.redis = failed('redis', 'unreachable or too slow')(e))),
      withTimeout(pending(), 3000, 'migrations')
        .then((p) => (checks.migrations = p.length ? { ok: false, detail: `${p.length} pending` } : { ok: true }))
        .catch((e: Error) => (checks.migrations = failed('migrations', 'unknown: the migrations table could not be read')(e))),
      ...(queues.length ? [queuesCheck(states, deps.logger).then((c) => (checks.queues = c))] : []),
    ]);
    // Process-local (ADR 0018): an API that never loaded the token revocation list answers every token
    // 503, so a load balancer must not route to it even when PostgreSQL and Redis answer this probe.
    if (deps.revocations && !checks.shutdown) {
      checks.token_revocations = deps.revocations.isLoaded ? { ok: true } : { ok: false, detail: 'not loaded yet: every token is answered 503' };
    }
    const failing = Object.entries(checks).filter(([, c]) => !c.ok);
    if (failing.length === 0) {
      res.json({ status: 'ready', checks });
      return;
    }
    res
      .status(503)
      .type(PROBLEM_CONTENT_TYPE)
      .send(
        JSON.stringify({
          type: `${PROBLEM_TYPE_BASE}not_ready`,
          title: 'Service Unavailable',
          status: 503,
          code: 'not_ready',
          detail: `Not ready: ${failing.map(([k, c]) => `${k} (${c.detail})`).join('; ')}`,
          checks,
        }),
      );
  };
}

export type QueueStateReader = Pick<Queue, 'name' | 'isPaused' | 'getGlobalConcurrency' | 'getGlobalRateLimit'>;

/** A queue's global limits, as BullMQ keeps them in its meta hash (`concurrency`; `max` jobs per `duration` ms). */
export interface QueueLimits {
  queue: string;
  concurrency?: number;
  rate_limit?: { max: number; duration_ms: number };
}

/** Whether a queue is paused, and its global limits: BullMQ's own readers, no raw Redis. */
export async function queueState(q: QueueStateReader): Promise<{ name: string; paused: boolean; limits: QueueLimits | undefined }> {
  const [paused, concurrency, rate] = await Promise.all([q.isPaused(), q.getGlobalConcurrency(), q.getGlobalRateLimit()]);
  const limits: QueueLimits = { queue: q.name };
  if (concurrency !== null) limits.concurrency = concurrency;
  if (rate !== null) limits.rate_limit = { max: rate.max, duration_ms: rate.duration };
  return { name: q.name, paused, limits: concurrency !== null || rate !== null ? limits : undefined };
}

/** "golden-path concurrency 1, 5 jobs per 60 s". */
export function describeLimits(l: QueueLimits): string {
  const parts = [...(l.concurrency !== undefined ? [`concurrency ${l.concurrency}`] : []), ...(l.rate_limit ? [`${l.rate_limit.max} jobs per ${l.rate_limit.duration_ms / 1000} s`] : [])];
  return `${l.queue} ${parts.join(', ')}`;
}

/**
 * The `queues` check: the paused queues, and the global concurrency and rate limits set on a queue,
 * reported and never failing readiness. A paused queue (Bull Board's pause, `queue.pause()`) holds every
 * run on it — the sweeper counts its jobs as there — while every other check passes. A global limit caps
 * every worker on the queue whatever WORKER_CONCURRENCY says; this release's dashboard refuses to set one
 * (admin-board.ts), but one an operator set from Bull Board before stays in Redis, in force, shown nowhere
 * else (docs/runbook.md says how to clear it). Either way this instance still serves (submissions, reads,
 * cancels, decisions), so taking it out of the load balancer would turn one stalled queue into an outage.
 * Unknown (Redis did not answer: the `redis` check fails then) is said, not failed.
 */
async function queuesCheck(
  read: () => Promise<Awaited<ReturnType<typeof queueState>>[]>,
  logger: Logger | undefined,
): Promise<{ ok: true; detail?: string; paused?: string[]; limited?: QueueLimits[] }> {
  try {
    const states = await withTimeout(read(), 2000, 'queues');
    const paused = states.filter((s) => s.paused).map((s) => s.name);
    const limited = states.flatMap((s) => (s.limits ? [s.limits] : []));
    if (!paused.length && !limited.length) return { ok: true };
    const details = [
      ...(paused.length ? [`paused: ${paused.join(', ')} — runs on them wait until resumed (docs/runbook.md, Stuck runs)`] : []),
      ...(limited.length ? [`global limits set in Redis: ${limited.map(describeLimits).join('; ')} — they cap every worker whatever WORKER_CONCURRENCY says (docs/runbook.md, A queue capped by a global limit)`] : []),
    ];
    return { ok: true, ...(paused.length ? { paused } : {}), ...(limited.length ? { limited } : {}), detail: details.join('; ') };
  } catch (e) {
    logger?.warn({ check: 'queues', err: (e as Error).message }, 'readiness: could not read whether the queues are paused or limited');
    return { ok: true, detail: 'unknown: whether a queue is paused or limited could not be read' };
  }
}
