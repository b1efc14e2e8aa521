import { ReplyError, type Redis } from 'ioredis';
import { fail, knownFail, notRequired, pass, unknownRow, type Acceptance, type ReadinessRow } from './readiness.types.ts';

const field = (info: string, name: string) => new RegExp(`^${name}:(.*)$`, 'm').exec(info)?.[1]?.trim();

/**
 * Redis answered the command with an error (NOPERM from an ACL, CONFIG renamed or disabled by a managed
 * Redis): the value is refused, so unknown. Any other error (the connection closed or timed out after
 * PING) is no answer at all and is rethrown: it must read as unreachable, never as an unknown value
 * READINESS_ACCEPT_UNKNOWN would accept.
 */
function refused(e: unknown): undefined {
  if (e instanceof ReplyError) return undefined;
  throw e;
}

async function configGet(redis: Redis, key: string): Promise<string | undefined> {
  try {
    const res = (await redis.call('CONFIG', 'GET', key)) as string[];
    return res[1];
  } catch (e) {
    return refused(e); // managed Redis may disable CONFIG; INFO is then the only source
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

/** Nothing accepted: every unknown value fails. */
const NO_ACCEPTANCE: Acceptance = { rows: [], note: undefined };

/** An INFO section, or '' where INFO is refused (an ACL, a managed Redis): its fields are then unknown. */
async function infoSection(redis: Redis, section: string): Promise<string> {
  try {
    return await redis.info(section);
  } catch (e) {
    return refused(e) ?? '';
  }
}

/**
 * Redis's `timeout` (idle clients closed after that many seconds) must be 0, its default: a worker whose
 * event loop is blocked (a long synchronous step, a GC pause) sends nothing, and a connection closed
 * meanwhile makes it look gone from CLIENT LIST, so its lapsed lock would count as a crash of its step
 * (ADR 0016, amendment). Unknown (CONFIG refused, managed Redis) fails like a non-zero one, nothing else
 * tells, unless the operator verified it and listed the row in READINESS_ACCEPT_UNKNOWN (ACCEPTED).
 */
export function idleTimeoutRow(timeout: string | undefined, acceptance: Acceptance = NO_ACCEPTANCE): ReadinessRow {
  if (timeout !== undefined && Number(timeout) === 0) return pass('redis-timeout', 'timeout 0: idle clients are never closed');
  const harm = 'a worker whose event loop is blocked that long (a long step) has its idle connection closed, looks gone, and its lapsed lock counts as a crash of its step (ADR 0016)';
  if (timeout === undefined) return unknownRow('redis-timeout', 'timeout unknown (CONFIG GET refused)', `it must be 0, or ${harm}`, acceptance);
  return knownFail('redis-timeout', `timeout is ${timeout} s: ${harm}; set timeout 0`, acceptance);
}

/**
 * Redis as BullMQ needs it: reachable, maxmemory-policy noeviction (an evicted job key corrupts a flow),
 * in production persistence on (AOF or RDB save rules), so a restart does not drop queued work, and
 * `timeout` 0 (idleTimeoutRow). INFO answers the policy and AOF, CONFIG GET the rest (and those two where
 * INFO is refused); a value neither answers is unknown: a FAIL, or ACCEPTED when the operator listed the
 * row in READINESS_ACCEPT_UNKNOWN. Only reachability (PING) decides whether Redis is there at all.
 */
export async function redisRows(redis: Redis, opts: { production: boolean; acceptance?: Acceptance }): Promise<ReadinessRow[]> {
  const acceptance = opts.acceptance ?? NO_ACCEPTANCE;
  let values: RedisValues;
  try {
    await ready(redis);
    await redis.ping();
    values = await readValues(redis);
  } catch (e) {
    const reason = `Redis unreachable: ${(e as Error).message}`;
    return [fail('redis', reason), knownFail('redis-eviction', reason, acceptance), knownFail('redis-persistence', reason, acceptance), knownFail('redis-timeout', reason, acceptance)];
  }
  const { policy, aof, save, timeout } = values;
  const state = `appendonly ${aof === undefined ? 'unknown' : aof ? 'yes' : 'no'}, ${save === undefined ? 'save rules unknown' : `save "${save}"`}`;
  return [
    pass('redis', `reachable (${redis.options.host}:${redis.options.port})`),
    policy === 'noeviction'
      ? pass('redis-eviction', 'maxmemory-policy noeviction')
      : policy === undefined
        ? unknownRow('redis-eviction', 'maxmemory-policy unknown (INFO and CONFIG GET refused)', 'BullMQ requires noeviction', acceptance)
        : knownFail('redis-eviction', `maxmemory-policy is ${policy}; BullMQ requires noeviction`, acceptance),
    persistenceRow(aof, save, state, opts.production, acceptance),
    idleTimeoutRow(timeout, acceptance),
  ];
}

/** The values the rows judge; undefined where Redis refused every command that tells it. */
interface RedisValues {
  policy: string | undefined;
  aof: boolean | undefined;
  save: string | undefined;
  timeout: string | undefined;
}

/** INFO first, CONFIG GET for the rest (and for what INFO refused); throws when Redis stops answering at all. */
async function readValues(redis: Redis): Promise<RedisValues> {
  const [memory, persistence] = await Promise.all([infoSection(redis, 'memory'), infoSection(redis, 'persistence')]);
  const policy = field(memory, 'maxmemory_policy') ?? (await configGet(redis, 'maxmemory-policy'));
  const aofField = field(persistence, 'aof_enabled');
  const [appendonly, save, timeout] = await Promise.all([aofField === undefined ? configGet(redis, 'appendonly') : undefined, configGet(redis, 'save'), configGet(redis, 'timeout')]);
  const aof = aofField !== undefined ? aofField === '1' : appendonly === undefined ? undefined : appendonly === 'yes';
  return { policy, aof, save, timeout };
}

/** AOF on or RDB save rules set passes; both known off is a FAIL in production; anything unread that could be on is unknown there. */
function persistenceRow(aof: boolean | undefined, save: string | undefined, state: string, production: boolean, acceptance: Acceptance): ReadinessRow {
  if (aof || (save !== undefined && save.trim() !== '')) return pass('redis-persistence', state);
  const unread = aof === undefined || save === undefined;
  if (!production) return notRequired('redis-persistence', `${state}: a restart ${unread ? 'may lose' : 'loses'} queued jobs`);
  if (unread) return unknownRow('redis-persistence', `persistence unknown (${state}: CONFIG GET refused)`, 'production Redis needs AOF or RDB save rules, or a restart loses queued jobs', acceptance);
  return knownFail('redis-persistence', `production Redis without persistence (${state}): a restart loses queued jobs`, acceptance);
}
