import { Job, type Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { parseSlotMember } from '../durable/tenant-slots.ts';

/*
 * Per-endpoint rate limits (`rate_limit_per_second`, ADR 0013, *Rate limits*): at most N requests a
 * second to an endpoint, over every worker process. Strict spacing: two POSTs to an endpoint are let go
 * at least 1/N s apart (by Redis's clock), so no half-open second holds more than N of them. Two keys
 * per limited endpoint:
 *   <prefix>:endpoint-rate:<endpoint id>          hash: `last`, when the last POST was let go, and
 *                                                 `tat`, the next turn free to reserve (µs, Redis's clock);
 *   <prefix>:endpoint-rate-waiting:<endpoint id>  the delivery jobs waiting for a turn, scored by it.
 * A delivery without a turn reserves the next free one (`tat`, which then moves one interval on), so
 * those put back come back one interval apart, in order, never together. A job back at its turn is let
 * go once the spacing from the last POST actually let go allows (a job ahead of it may have come late):
 * the spacing holds between the POSTs themselves, not only between the turns handed out.
 * A test event (`webhook.test`, an admin watching for its outcome) is the one exception to FIFO turns:
 * with jobs waiting, it takes the earliest turn one of them holds, and that job the next free turn at
 * the tail, in the same script (atomic over every worker). The turns handed out are the same set a
 * plain take would have made, only one job swapped: the spacing is untouched.
 */

/** Redis's clock in µs (a Lua double holds it exactly); the writes replicate as effects. */
const NOW_US = `if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function us(x) return string.format('%.0f', x) end
`;

/**
 * KEYS: state, waiting. ARGV: member, interval µs, keep ms, 'first' (a test event) or ''. Returns {ms,
 * displaced}. ms 0: go now (recorded as the last POST let go). Else how many ms until the member's
 * turn: the one it holds (kept), or the next free one, reserved now. A member with no turn goes now
 * only if no turn is reserved ahead of it. 'first', with no turn and none free now: it takes the
 * earliest turn a waiting member holds, and that member (`displaced`, else false) the next free turn
 * at the tail (`tat`, moved on one interval, as any reservation moves it) — its job, back at its old
 * turn, finds the new one and is put back until it. The keys live `keep` (a minute) past the last turn
 * reserved, and a turn that long past is dropped: its job ended without coming back for it (its
 * delivery gone or settled, the job removed, a recall that failed) — else a busy endpoint, whose set
 * never expires, would keep such members for ever. A job that comes back that late reserves a new turn.
 */
const TAKE = `${NOW_US}
local interval = tonumber(ARGV[2])
local keep = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. us(now - keep * 1000))
local last = tonumber(redis.call('HGET', KEYS[1], 'last') or '')
local earliest = last and last + interval or now
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or '') or 0
local turn = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '')
local displaced = false
local function keepKeys()
  local ttl = math.ceil((tat - now) / 1000) + keep
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
if not turn and ARGV[4] == 'first' and math.max(tat, earliest) > now then
  local head = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if head[1] then
    turn = tonumber(head[2])
    local tail = math.max(tat, math.max(turn, earliest) + interval)
    redis.call('ZADD', KEYS[2], us(tail), head[1])
    redis.call('ZADD', KEYS[2], us(turn), ARGV[1])
    tat = tail + interval
    redis.call('HSET', KEYS[1], 'tat', us(tat))
    keepKeys()
    displaced = head[1]
  end
end
local at
if turn then
  at = math.max(turn, earliest)
else
  at = math.max(tat, earliest, now)
end
if at <= now then
  redis.call('HSET', KEYS[1], 'last', us(now))
  if tat < now + interval then tat = now + interval; redis.call('HSET', KEYS[1], 'tat', us(tat)) end
  if turn then redis.call('ZREM', KEYS[2], ARGV[1]) end
  redis.call('PEXPIRE', KEYS[1], math.ceil((tat - now) / 1000) + keep)
  return {0, displaced}
end
if not turn then
  redis.call('ZADD', KEYS[2], us(at), ARGV[1])
  tat = at + interval
  redis.call('HSET', KEYS[1], 'tat', us(tat))
  keepKeys()
end
return {math.ceil((at - now) / 1000), displaced}`;

/**
 * KEYS: state, waiting. ARGV: 'drop' when the endpoint is gone. The limit changed: forgets every turn
 * handed out (the waiting members, returned for the caller to promote, and `tat`), keeping `last`: the
 * next POSTs are spaced from the last one let go by the new limit, and the jobs come back to reserve
 * turns under it. The endpoint deleted or disabled: both keys go (re-enabled, it starts afresh).
 */
const RECALL = `local m = redis.call('ZRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
if ARGV[1] == 'drop' then redis.call('DEL', KEYS[1]) else redis.call('HDEL', KEYS[1], 'tat') end
return m`;

type RateRedis = Redis & {
  dealixRateTake(state: string, waiting: string, member: string, intervalUs: number, keepMs: number, first: 'first' | ''): Promise<[number, string | null]>;
  dealixRateRecall(state: string, waiting: string, mode: 'keep' | 'drop'): Promise<string[]>;
};

/** How long an endpoint's rate keys, and a turn its job did not come back for, outlive that turn. */
export const RATE_KEEP_MS = 60_000;

/** The spacing of an endpoint's POSTs at `perSecond`, in µs, rounded up: never N+1 in a second. */
export const rateIntervalUs = (perSecond: number) => Math.ceil(1_000_000 / perSecond);

/** The Redis side of the endpoints' rate limits: one script (EVALSHA) per turn taken, one per recall. */
export class EndpointRates {
  private readonly redis: RateRedis;
  private readonly prefix: string;
  private readonly keepMs: number;

  /** `keepMs`: how long the keys, and a turn not come back for, outlive the turn (a minute; shorter in tests). */
  constructor(redis: Redis, prefix: string, opts: { keepMs?: number } = {}) {
    this.prefix = prefix;
    this.keepMs = opts.keepMs ?? RATE_KEEP_MS;
    if (!('dealixRateTake' in redis)) {
      redis.defineCommand('dealixRateTake', { numberOfKeys: 2, lua: TAKE });
      redis.defineCommand('dealixRateRecall', { numberOfKeys: 2, lua: RECALL });
    }
    this.redis = redis as RateRedis;
  }

  stateKey(endpoint: string): string {
    return `${this.prefix}:endpoint-rate:${endpoint}`;
  }

  waitingKey(endpoint: string): string {
    return `${this.prefix}:endpoint-rate-waiting:${endpoint}`;
  }

  /** 0: `member` may POST to `endpoint` now. Else the ms until its turn (reserved, or the one it holds). */
  async take(endpoint: string, member: string, perSecond: number): Promise<number> {
    return (await this.run(endpoint, member, perSecond, '')).waitMs;
  }

  /**
   * A test event's `take`: with no turn of its own and none free now, `member` takes the earliest turn a
   * waiting job holds, and that job (`displaced`, its member) the next free turn at the tail. With nobody
   * waiting, as `take`.
   */
  takeFirst(endpoint: string, member: string, perSecond: number): Promise<{ waitMs: number; displaced: string | null }> {
    return this.run(endpoint, member, perSecond, 'first');
  }

  private async run(endpoint: string, member: string, perSecond: number, first: 'first' | ''): Promise<{ waitMs: number; displaced: string | null }> {
    const [waitMs, displaced] = await this.redis.dealixRateTake(this.stateKey(endpoint), this.waitingKey(endpoint), member, rateIntervalUs(perSecond), this.keepMs, first);
    return { waitMs, displaced };
  }

  /** Whether `member` still holds a turn of `endpoint` (not recalled by a change of its limit). */
  async holdsTurn(endpoint: string, member: string): Promise<boolean> {
    return (await this.redis.zscore(this.waitingKey(endpoint), member)) !== null;
  }

  /** Forgets `endpoint`'s turns (its limit changed), and with `gone` (deleted or disabled) its last POST too (its keys deleted); the members that were waiting for one. */
  recall(endpoint: string, gone = false): Promise<string[]> {
    return this.redis.dealixRateRecall(this.stateKey(endpoint), this.waitingKey(endpoint), gone ? 'drop' : 'keep');
  }
}

/**
 * After a change of an endpoint's limit: its deliveries waiting for a turn are promoted (moved to
 * `wait`) to take one under the new limit, rather than wait out turns spaced by the old one. After its
 * DELETE or its disable (`gone`: it takes no more turns): its keys are deleted and the jobs promoted end
 * now (their deliveries went with it, or are given up as a disabled endpoint's are, taking no turn),
 * rather than linger delayed until turns that may be hours off, and the keys with them. Best effort: a
 * job not promoted comes back at its old turn. Not awaited by the caller.
 */
export function recallWaiting(rates: EndpointRates, queue: Queue, endpoint: string, logger: Logger, gone = false): void {
  const run = async () => {
    for (const member of await rates.recall(endpoint, gone)) {
      const job = await Job.fromId(queue, parseSlotMember(member).jobId);
      // Not delayed any more (active, or ended): nothing to promote.
      await job?.promote().catch(() => undefined);
    }
  };
  run().catch((err: unknown) => logger.warn({ err, webhook_endpoint_id: endpoint }, 'could not recall the deliveries waiting for a rate turn; they come back at their turns'));
}
