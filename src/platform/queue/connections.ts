import { Redis, type RedisOptions } from 'ioredis';
import type { Logger } from 'pino';

/**
 * Redis connections. Workers (blocking commands) need maxRetriesPerRequest: null and reconnect forever;
 * producers fail fast so an API request never hangs on a dead Redis.
 */
export function createRedis(url: string, role: 'worker' | 'producer', name: string): Redis {
  const opts: RedisOptions =
    role === 'worker'
      ? { maxRetriesPerRequest: null, enableReadyCheck: true, connectionName: name, retryStrategy: (n) => Math.min(n * 200, 2000) }
      : {
          maxRetriesPerRequest: 1,
          enableOfflineQueue: false,
          connectTimeout: 2000,
          commandTimeout: 5000,
          connectionName: name,
          retryStrategy: (n) => Math.min(n * 200, 2000),
        };
  const redis = new Redis(url, opts);
  // Errors surface on the commands that fail; an unhandled 'error' event must not crash the process.
  redis.on('error', () => {});
  return redis;
}

/**
 * The name a worker process's Redis connection carries (CLIENT SETNAME, re-sent on every reconnect):
 * its instance id, which is also what it records as a run's `lease_owner` (ADR 0016).
 */
export const workerConnectionName = (instanceId: string): string => `dealix-worker-${instanceId}`;

/**
 * The instance ids of the worker processes that have a connection open to Redis now (CLIENT LIST).
 * A process that died — SIGKILL, an OOM kill, a crash in native code — has none: the kernel closes
 * its sockets at once, and Redis drops them. A process that is alive keeps its connection however long
 * its event loop is blocked (the kernel, not the process, holds the socket open and answers keepalives).
 */
export async function connectedWorkers(redis: Redis): Promise<Set<string>> {
  const list = String(await redis.client('LIST'));
  const prefix = workerConnectionName('');
  const ids = new Set<string>();
  // One client a line, `key=value` fields separated by spaces; a client name cannot contain a space.
  for (const m of list.matchAll(/(?:^| )name=(\S+)/gm)) if (m[1]!.startsWith(prefix)) ids.add(m[1]!.slice(prefix.length));
  return ids;
}

/** What a worker says at start when Redis closes idle clients (a literal, for searching the logs). */
export const REDIS_IDLE_TIMEOUT_WARNING = "Redis closes idle clients (its timeout is not 0): a worker whose event loop is blocked that long looks gone, and its lapsed lock counts as a crash of its step (ADR 0016); set timeout 0";

/**
 * Warns when Redis's `timeout` is not 0: it closes a client idle that many seconds, and a worker whose
 * event loop is blocked (a long synchronous step, a GC pause) sends nothing meanwhile, so its connection
 * goes, it is missing from CLIENT LIST (connectedWorkers) and a stall of its job counts as a crash
 * (ADR 0016, amendment). Where CONFIG is refused (managed Redis) nothing is said here: the readiness
 * row `redis-timeout` fails and says so, or reads ACCEPTED once the operator verified the value where it
 * is set (READINESS_ACCEPT_UNKNOWN); a value read here and not 0 is warned of, accepted or not. Never throws.
 */
export async function warnWhenIdleTimeout(redis: Redis, logger: Logger): Promise<void> {
  const timeout = await redis.call('CONFIG', 'GET', 'timeout').then((r) => (r as string[])[1], () => undefined);
  if (timeout !== undefined && Number(timeout) !== 0) logger.warn({ redis_timeout_seconds: Number(timeout) }, REDIS_IDLE_TIMEOUT_WARNING);
}

/**
 * Resolves once `redis` is connected and ready, or after `timeoutMs` (whatever its state then): the API
 * waits for it before it listens, so a process that has just started does not answer its first
 * requests 503 while its producer connection (no offline queue) is still connecting. A Redis that is
 * down does not keep the API from starting: /readyz reports it.
 */
export async function untilReady(redis: Redis, timeoutMs: number): Promise<void> {
  if (redis.status === 'ready') return;
  await new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(timer);
      redis.off('ready', done);
      resolve();
    };
    const timer = setTimeout(done, timeoutMs);
    redis.once('ready', done);
  });
}
