import pino from 'pino';
import { installIoCounter } from '../lib/io-counter.ts';
import { startEngineRun, stopAll } from '../lib/ours.ts';
import type { EngineTarget } from './engine.ts';
import { Sweeper } from '../../../src/platform/durable/sweeper.ts';

export interface SweepResult {
  /** Incomplete runs the sweep examined (pending and running, each with a live run job). */
  examined: number;
  reenqueued: number;
  ms: number;
  /** PostgreSQL round trips the sweep made (pg client calls). */
  pgRoundTrips: number;
  /** Socket writes to Redis (a command, or a pipelined batch of them). */
  redisWrites: number;
}

/**
 * The recovery sweeper over a deep backlog: the engine's workers stopped (gracefully: a job in hand
 * finishes or goes back to `wait`), the backlog topped up to `backlog` incomplete runs whose run jobs
 * wait in Redis, then one sweep that considers every run (minimum age 0), timed and counted. Every
 * run has a live job, so the right answer is to re-enqueue none; what it costs to find that out is
 * what a sweep costs every `SWEEPER_INTERVAL` while a backlog older than `SWEEPER_MIN_AGE` waits.
 */
export async function sweepBacklog(engine: EngineTarget, backlog: number, tenants: string[]): Promise<SweepResult> {
  await stopAll(engine.workers);
  const c = engine.producer;
  const incomplete = await countIncomplete(engine);
  const more = Math.max(0, backlog - incomplete);
  let next = 0;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (next < more) await startEngineRun(c, tenants[next++ % tenants.length]!);
    }),
  );
  const prefix = engine.target.prefix;
  const markerKey = `${prefix}:bench-sweep-marker`;
  // The marker says Redis kept its data since the last sweep: the sweep goes straight to the backlog.
  await c.redis.set(markerKey, new Date().toISOString());
  const sweeper = new Sweeper({
    orm: c.orm,
    runtime: c.runtime,
    redis: c.redis,
    logger: pino({ level: 'warn' }),
    lockKey: `${prefix}:bench-sweep-lock`,
    markerKey,
    intervalMs: 15_000,
    minAgeMs: 0,
  });
  const counter = installIoCounter();
  counter.reset();
  const t0 = performance.now();
  const report = await sweeper.sweep();
  const ms = performance.now() - t0;
  return {
    examined: report.examined,
    reenqueued: report.reenqueued,
    ms,
    pgRoundTrips: counter.total,
    redisWrites: counter.redisWrites,
  };
}

async function countIncomplete(engine: EngineTarget): Promise<number> {
  const { Client } = (await import('pg')).default;
  const client = new Client({ connectionString: engine.target.db.ownerUrl });
  await client.connect();
  try {
    const r = await client.query(`select count(*)::int as n from durable_runs where status in ('pending', 'running')`);
    return r.rows[0].n as number;
  } finally {
    await client.end();
  }
}
