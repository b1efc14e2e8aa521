import type { Redis } from 'ioredis';
import { fail, notRequired, pass, type ReadinessRow } from './readiness.types.ts';

const field = (info: string, name: string) => new RegExp(`^${name}:(.*)$`, 'm').exec(info)?.[1]?.trim();

async function configGet(redis: Redis, key: string): Promise<string | undefined> {
  try {
    const res = (await redis.call('CONFIG', 'GET', key)) as string[];
    return res[1];
  } catch {
    return undefined; // managed Redis may disable CONFIG; INFO is then the only source
  }
}

/** Producer connections do not queue commands while connecting (enableOfflineQueue: false): wait for ready first. */
async function ready(redis: Redis, timeoutMs = 5000): Promise<void> {
  if (redis.status === 'ready') return;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      redis.off('ready', onReady);
      reject(new Error(`not ready after ${timeoutMs} ms (status ${redis.status})`));
    }, timeoutMs);
    const onReady = () => {
      clearTimeout(timer);
      resolve();
    };
    redis.once('ready', onReady);
  });
}

/**
 * Redis's `timeout` (idle clients closed after that many seconds) must be 0, its default: a worker whose
 * event loop is blocked (a long synchronous step, a GC pause) sends nothing, and a connection closed
 * meanwhile makes it look gone from CLIENT LIST, so its lapsed lock would count as a crash of its step
 * (ADR 0016, amendment). Unknown (CONFIG refused, managed Redis) fails like a non-zero one: nothing else tells.
 */
export function idleTimeoutRow(timeout: string | undefined): ReadinessRow {
  if (timeout !== undefined && Number(timeout) === 0) return pass('redis-timeout', 'timeout 0: idle clients are never closed');
  const harm = 'a worker whose event loop is blocked that long (a long step) has its idle connection closed, looks gone, and its lapsed lock counts as a crash of its step (ADR 0016)';
  return fail('redis-timeout', timeout === undefined ? `timeout unknown (CONFIG GET refused): it must be 0, or ${harm}` : `timeout is ${timeout} s: ${harm}; set timeout 0`);
}

/**
 * Redis as BullMQ needs it: reachable, maxmemory-policy noeviction (an evicted job key corrupts a flow),
 * in production persistence on (AOF or RDB save rules), so a restart does not drop queued work, and
 * `timeout` 0 (idleTimeoutRow).
 */
export async function redisRows(redis: Redis, opts: { production: boolean }): Promise<ReadinessRow[]> {
  let memory: string;
  let persistence: string;
  try {
    await ready(redis);
    await redis.ping();
    [memory, persistence] = await Promise.all([redis.info('memory'), redis.info('persistence')]);
  } catch (e) {
    const reason = `Redis unreachable: ${(e as Error).message}`;
    return [fail('redis', reason), fail('redis-eviction', reason), fail('redis-persistence', reason), fail('redis-timeout', reason)];
  }
  const policy = field(memory, 'maxmemory_policy') ?? (await configGet(redis, 'maxmemory-policy'));
  const aof = field(persistence, 'aof_enabled') === '1';
  const [saveRules, timeout] = await Promise.all([configGet(redis, 'save'), configGet(redis, 'timeout')]);
  const save = saveRules ?? '';
  const state = `appendonly ${aof ? 'yes' : 'no'}, save "${save}"`;
  return [
    pass('redis', `reachable (${redis.options.host}:${redis.options.port})`),
    policy === 'noeviction' ? pass('redis-eviction', 'maxmemory-policy noeviction') : fail('redis-eviction', `maxmemory-policy is ${policy ?? 'unknown'}; BullMQ requires noeviction`),
    aof || save.trim() !== ''
      ? pass('redis-persistence', state)
      : !opts.production
        ? notRequired('redis-persistence', `${state}: a restart loses queued jobs`)
        : fail('redis-persistence', `production Redis without persistence (${state}): a restart loses queued jobs`),
    idleTimeoutRow(timeout),
  ];
}
