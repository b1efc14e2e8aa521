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
