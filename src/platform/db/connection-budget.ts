import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { MikroORM } from './orm.ts';

/*
 * The connection budget: every API and worker process declares its database pool's maximum (poolMaxFor)
 * in one sorted set under its QUEUE_PREFIX, and each of them adds up the pools declared by the processes
 * alive now and compares the sum with what PostgreSQL lets the application open. Pools open connections
 * lazily (orm.ts: min 0), so a deployment whose pools add up to more than max_connections starts and runs
 * fine until the load fills every pool at once, and then fails with SQLSTATE 53300 "too many clients" —
 * which is how raising WORKER_CONCURRENCY's default from 8 to 16 (session 42: a worker pools 38, not 22)
 * would have shown in a deployment of 1 API and 3 workers on PostgreSQL's default 100 (docs/runbook.md,
 * *Processes*). The check says it at start instead.
 *
 *   <prefix>:connection-budget   members: `{"service","instance","pool"}` (JSON), scored by the moment
 *                                the declaration lapses (Redis time, ms), as the tenant slots' leases are
 *                                (tenant-slots.ts): no host's clock decides who is alive.
 *
 * A process renews its member every heartbeat (one script: prune the lapsed, ZADD, read the rest — one
 * round trip), removes it at a clean stop, and a process killed (SIGKILL, OOM, a lost host) drops out once
 * its declaration lapses, `expiryMs` after its last beat. Nothing is added to a request's or a job's path.
 * Every failure (Redis down, the settings' query refused or timed out, the pool closing) is skipped: logged
 * at debug, the next beat tries again. The check only ever warns: it never stops or slows a process.
 */

/** What to do about it: the warning and the readiness row say the same. */
export const BUDGET_ADVICE = 'put PgBouncer (transaction pooling) in front, split workers by WORKER_QUEUES, set WORKER_CONCURRENCY=8 or DATABASE_POOL_MAX lower, or raise max_connections (docs/runbook.md, Connection budget)';

/** What a process logs when the live processes' pools add up to more than PostgreSQL allows (a literal, for searching the logs). */
export const CONNECTION_BUDGET_WARNING = `the database pools of the live API and worker processes add up to more connections than PostgreSQL lets the application open: under load they fail with SQLSTATE 53300 "too many clients"; ${BUDGET_ADVICE}`;

/** How often a process renews its declaration and checks the budget, by default. */
export const BUDGET_HEARTBEAT_MS = 10_000;
/** How long a declaration outlives its last heartbeat, by default: three beats, so one late beat does not drop a live process. */
export const BUDGET_EXPIRY_MS = 30_000;

export const budgetKey = (prefix: string): string => `${prefix}:connection-budget`;

/** One process's declaration: its service, its instance id (container.ts) and its pool's maximum. */
export interface PoolDeclaration {
  service: 'api' | 'worker';
  instance: string;
  pool: number;
}

/** What PostgreSQL lets the application open: max_connections less the slots kept for superusers (and, PG16+, for pg_use_reserved_connections). */
export interface ConnectionLimit {
  maxConnections: number;
  superuserReserved: number;
  reserved: number;
  usable: number;
}

/** The live declarations added up: per service and pool size, how many processes and how many connections. */
export interface BudgetTally {
  processes: number;
  total: number;
  pools: Array<{ service: string; pool: number; processes: number; connections: number }>;
}

/** Redis's clock in ms (as tenant-slots.ts's NOW), then the lapsed declarations pruned. */
const NOW = `if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
`;

/**
 * Renews ARGV[1] until now + ARGV[2] ms and answers every live member. The key expires with the longest
 * declaration (only ever extended: a process with a shorter expiry never cuts another's short), so a
 * deployment that is gone leaves nothing behind.
 */
const DECLARE = `${NOW}redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('ZRANGE', KEYS[1], 0, -1)`;

/** The live members, read-only (the readiness row): those whose declaration lapses after Redis's now. */
const LIVE = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')`;

const memberOf = (d: PoolDeclaration): string => JSON.stringify({ service: d.service, instance: d.instance, pool: d.pool });

/** The declarations among `members`; anything else in the set (written by hand, by another release) is left out. */
function parseMembers(members: readonly string[]): PoolDeclaration[] {
  const out: PoolDeclaration[] = [];
  for (const m of members) {
    try {
      const d = JSON.parse(m) as Partial<PoolDeclaration>;
      if ((d.service === 'api' || d.service === 'worker') && typeof d.instance === 'string' && Number.isInteger(d.pool) && d.pool! > 0) out.push({ service: d.service, instance: d.instance, pool: d.pool! });
    } catch {
      // not a declaration
    }
  }
  return out;
}

/** Declares `d` until `expiryMs` from now (Redis's clock) and answers every live declaration, its own among them. */
export async function declarePool(redis: Redis, prefix: string, d: PoolDeclaration, expiryMs: number): Promise<PoolDeclaration[]> {
  return parseMembers((await redis.eval(DECLARE, 1, budgetKey(prefix), memberOf(d), String(expiryMs))) as string[]);
}

/** The declarations alive now (read-only). */
export async function livePools(redis: Redis, prefix: string): Promise<PoolDeclaration[]> {
  return parseMembers((await redis.eval(LIVE, 1, budgetKey(prefix))) as string[]);
}

/** Removes `d` at once (a clean stop). */
export async function withdrawPool(redis: Redis, prefix: string, d: PoolDeclaration): Promise<void> {
  await redis.zrem(budgetKey(prefix), memberOf(d));
}

/**
 * PostgreSQL's limit as the application role reads it (current_setting, which any role may call, as
 * SHOW). `reserved_connections` exists from PostgreSQL 16 (slots for pg_use_reserved_connections, which
 * the application role is not a member of): missing_ok reads it as NULL on older servers.
 */
export async function connectionLimit(orm: MikroORM): Promise<ConnectionLimit> {
  const [row] = await orm.em
    .getConnection()
    .execute<{ max: string; su: string; reserved: string | null }[]>(
      `select current_setting('max_connections') as max, current_setting('superuser_reserved_connections') as su, current_setting('reserved_connections', true) as reserved`,
    );
  const maxConnections = Number(row!.max);
  const superuserReserved = Number(row!.su);
  const reserved = row!.reserved == null || row!.reserved === '' ? 0 : Number(row!.reserved);
  return { maxConnections, superuserReserved, reserved, usable: maxConnections - superuserReserved - reserved };
}

/** Adds the declarations up, grouped by service and pool size (a deployment split by WORKER_QUEUES pools differently per worker). */
export function tally(pools: readonly PoolDeclaration[]): BudgetTally {
  const groups = new Map<string, { service: string; pool: number; processes: number; connections: number }>();
  for (const d of pools) {
    const k = `${d.service}/${d.pool}`;
    const g = groups.get(k) ?? groups.set(k, { service: d.service, pool: d.pool, processes: 0, connections: 0 }).get(k)!;
    g.processes++;
    g.connections += d.pool;
  }
  const sorted = [...groups.values()].sort((a, b) => a.service.localeCompare(b.service) || b.pool - a.pool);
  return { processes: pools.length, total: pools.reduce((s, d) => s + d.pool, 0), pools: sorted };
}

/** `api 1×10, worker 3×38`: the tally in a few words. */
export const describeTally = (t: BudgetTally): string => t.pools.map((g) => `${g.service} ${g.processes}×${g.pool}`).join(', ');

/** `max_connections 100 − 3 superuser_reserved_connections`: how the usable limit comes about. */
export const describeLimit = (l: ConnectionLimit): string =>
  `max_connections ${l.maxConnections} − ${l.superuserReserved} superuser_reserved_connections${l.reserved ? ` − ${l.reserved} reserved_connections` : ''}`;

/** The fields the warning carries: the sum, each service's processes and pool size, the usable limit and how it comes about. */
export const budgetFields = (t: BudgetTally, l: ConnectionLimit) => ({
  declared_connections: t.total,
  usable_connections: l.usable,
  processes: t.processes,
  pools: t.pools,
  pools_text: describeTally(t),
  max_connections: l.maxConnections,
  superuser_reserved_connections: l.superuserReserved,
  reserved_connections: l.reserved,
});

/** The longest a stop waits for Redis: the withdrawal is a courtesy, the expiry the guarantee. */
const STOP_BOUND_MS = 1_000;

/** Settles when `p` does or after STOP_BOUND_MS, whichever is first; never rejects. */
async function bounded(p: Promise<unknown> | undefined): Promise<void> {
  if (!p) return;
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([p.catch(() => {}), new Promise<void>((r) => (timer = setTimeout(r, STOP_BOUND_MS)))]);
  clearTimeout(timer);
}

export interface ConnectionBudgetOptions {
  redis: Redis;
  orm: MikroORM;
  prefix: string;
  logger: Logger;
  declaration: PoolDeclaration;
  heartbeatMs?: number;
  expiryMs?: number;
}

/**
 * One process's side of the budget: `start()` declares its pool and checks at once, then every
 * `heartbeatMs`; `stop()` withdraws it. The warning is logged once per sum and limit: again only when
 * either changes while over the limit (a process more, a restarted server with another
 * max_connections), not at every beat; back within the limit, the next excess is warned of again.
 */
export class ConnectionBudget {
  private readonly heartbeatMs: number;
  private readonly expiryMs: number;
  private timer: NodeJS.Timeout | undefined;
  /** The beat in flight, if any: a beat never overlaps the next (a slow PostgreSQL skips beats, it does not pile them up). */
  private beating: Promise<void> | undefined;
  /** Its Redis write, awaited by stop() so a withdrawal is never followed by that beat's renewal. */
  private declaring: Promise<unknown> | undefined;
  private stopped = false;
  /** `sum/usable` of the last warning, while over the limit. */
  private warned: string | undefined;

  private readonly opts: ConnectionBudgetOptions;

  constructor(opts: ConnectionBudgetOptions) {
    this.opts = opts;
    this.heartbeatMs = opts.heartbeatMs ?? BUDGET_HEARTBEAT_MS;
    this.expiryMs = opts.expiryMs ?? BUDGET_EXPIRY_MS;
  }

  /** Declares and checks now (not awaited: a start is never held by it), then every heartbeat. */
  start(): void {
    if (this.timer || this.stopped) return;
    void this.beat();
    this.timer = setInterval(() => void this.beat(), this.heartbeatMs);
    this.timer.unref();
  }

  /** One heartbeat: renew the declaration, then compare the live pools with PostgreSQL's limit. Never throws. */
  beat(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    this.beating ??= this.check().finally(() => (this.beating = undefined));
    return this.beating;
  }

  private async check(): Promise<void> {
    const { redis, orm, prefix, logger, declaration } = this.opts;
    try {
      this.declaring = declarePool(redis, prefix, declaration, this.expiryMs);
      const pools = (await this.declaring) as PoolDeclaration[];
      const limit = await connectionLimit(orm);
      if (this.stopped) return;
      const t = tally(pools);
      if (t.total <= limit.usable) {
        this.warned = undefined;
        return;
      }
      const said = `${t.total}/${limit.usable}`;
      if (said === this.warned) return;
      this.warned = said;
      logger.warn(budgetFields(t, limit), CONNECTION_BUDGET_WARNING);
    } catch (err) {
      logger.debug({ err }, 'connection budget not checked this time (Redis or PostgreSQL did not answer)');
    } finally {
      this.declaring = undefined;
    }
  }

  /**
   * Stops the heartbeat and withdraws the declaration. A failure leaves it to lapse; so does a Redis that
   * does not answer within STOP_BOUND_MS (a hung connection would otherwise hold the process's stop for
   * the producer connection's 5 s command timeout, past its shutdown deadline).
   */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    await bounded(this.declaring);
    await bounded(withdrawPool(this.opts.redis, this.opts.prefix, this.opts.declaration));
  }
}
