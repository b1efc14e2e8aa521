import { Redis, type RedisOptions } from 'ioredis';

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
