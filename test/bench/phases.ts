import { randomBytes, randomUUID } from 'node:crypto';
import type { BenchDatabases } from './lib/bench-db.ts';
import type { Plan } from './plan.ts';
import type { Results } from './report.ts';
import { openEngine } from './scenarios/engine.ts';
import { openDbos, openRawBullmq } from './scenarios/peers.ts';
import { openHttp } from './scenarios/http.ts';
import { measureRecovery } from './scenarios/recovery.ts';
import { measureFloor } from './scenarios/floor.ts';
import { sweepBacklog } from './scenarios/sweep.ts';
import { rowCount, seedRows, seedTenant } from './scenarios/data.ts';

export interface PhaseContext {
  plan: Plan;
  dbs: BenchDatabases;
  results: Results;
  /** Our worker concurrency, which the raw BullMQ worker uses too. */
  concurrency: number;
  /** A fresh queue prefix, deleted at the end of the run. */
  newPrefix(): string;
  progress(msg: string): void;
  /** Registers a close for the end of the phase, also when it fails (children must not outlive it). */
  defer<T extends { close(): Promise<unknown> }>(target: T): T;
}

export type Phase = (ctx: PhaseContext) => Promise<void>;

export const newPrefix = () => `bench${randomBytes(4).toString('hex')}`;

/** Like for like, one process each, same load; ABBA order over the rounds so drift favours no one. Then growth on the engine target. */
export const comparePhase: Phase = async (ctx) => {
  const { plan, results } = ctx;
  const [engineDb, dbosDb] = await Promise.all([ctx.dbs.clone('engine'), ctx.dbs.clone('dbos')]);
  const engine = ctx.defer(await openEngine({ db: engineDb, prefix: ctx.newPrefix() }, 1));
  const dbos = ctx.defer(await openDbos(dbosDb));
  const raw = ctx.defer(await openRawBullmq(ctx.newPrefix(), ctx.concurrency));
  const c = plan.compare;
  const order: Array<'raw' | 'dbos' | 'engine'> = [];
  for (let r = 0; r < c.rounds; r++) order.push(...(r % 2 ? (['engine', 'dbos', 'raw'] as const) : (['raw', 'dbos', 'engine'] as const)));
  results.compare = { engine: [], dbos: [], raw: [] };
  for (const who of order) {
    ctx.progress(`  ${who}`);
    const opts = { total: c.total, inFlight: c.inFlight, warmup: c.warmup, maxMs: c.maxMs };
    const m = who === 'engine' ? await engine.run(opts) : who === 'dbos' ? await dbos.run(opts) : await raw.run(opts);
    results.compare[who].push(m);
  }
  await Promise.all([raw.close(), dbos.close()]);
  // Growth on the same engine target: 10 in flight, then 2 and 4 worker processes at the same load.
  ctx.progress('  in flight 10');
  results.inFlight = { light: await engine.run({ total: plan.inFlight.light.total, inFlight: 10, maxMs: plan.inFlight.light.maxMs, accounting: false }) };
  const w = plan.workers;
  results.workers = { 1: results.compare.engine[0]! };
  let have = 1;
  for (const n of w.counts) {
    await engine.addWorkers(n - have);
    have = n;
    ctx.progress(`  ${n} worker processes`);
    results.workers[n] = await engine.run({ total: w.total, inFlight: w.inFlight, maxMs: w.maxMs, accounting: false });
  }
};

/** 1,000 in flight on one worker, on its own database: the backlog is abandoned at the end, not drained. */
export const deepPhase: Phase = async (ctx) => {
  const engine = ctx.defer(await openEngine({ db: await ctx.dbs.clone('deep'), prefix: ctx.newPrefix() }, 1));
  const deep = ctx.plan.inFlight.deep;
  ctx.results.inFlight ??= {};
  // A warm-up first, as every other window has (100 runs, completed before the window): the worker
  // process is new, and a window from its cold start also timed its JIT and its pool's connecting.
  ctx.results.inFlight.deep = await engine.run({ total: deep.total, inFlight: 1000, warmup: 100, maxMs: deep.windowMs, abandonAfterMs: deep.windowMs, accounting: false });
  // What the abandoned backlog costs the recovery sweeper: one sweep over it, topped up, workers stopped.
  ctx.progress(`  one sweep over a backlog of ${deep.sweepBacklog} runs`);
  ctx.results.sweep = await sweepBacklog(engine, deep.sweepBacklog, Array.from({ length: 50 }, () => randomUUID()));
};

/** Ours over HTTP: closed loop to completion, POST at a fixed rate (with a worker, then alone), idempotency on/off. */
export const e2ePhase: Phase = async (ctx) => {
  const { plan, results } = ctx;
  const http = ctx.defer(await openHttp({ db: await ctx.dbs.clone('e2e'), prefix: ctx.newPrefix() }, 1));
  const e = plan.e2e;
  results.e2e = await http.run({ total: e.total, inFlight: e.inFlight, warmup: e.warmup, maxMs: e.maxMs });
  ctx.progress(`  POST at ${plan.fixedRate.rps}/s, worker running`);
  results.fixedRate = await http.fixedRate(plan.fixedRate.rps, plan.fixedRate.seconds);
  await http.stopWorkers();
  // The layer's own cost, not its amplification by a saturated CPU: sequential POSTs to an API at rest.
  ctx.progress('  idempotency on/off');
  results.idempotency = await http.idempotencyPairs(plan.idempotencyPairs);
  ctx.progress(`  POST at ${plan.fixedRate.rps}/s, API alone`);
  results.fixedRateApiAlone = await http.fixedRate(plan.fixedRate.rps, plan.fixedRate.seconds);
};

/**
 * RLS on (app role) against RLS off (owner on NO FORCE tables), one run at a time, rounds alternating
 * — and a control: a second RLS-on side, identical to the first (its own database and worker), in the
 * same rotation. The control's difference from the first side is what the method reads when there is
 * nothing to find (an A/A test): the resolution of the RLS figure on this machine.
 */
export const rlsPhase: Phase = async (ctx) => {
  const [onDb, controlDb, offDb] = await Promise.all([ctx.dbs.clone('rlson'), ctx.dbs.clone('rlsctl'), ctx.dbs.clone('rlsoff', { rlsOff: true })]);
  const targets = {
    on: ctx.defer(await openEngine({ db: onDb, prefix: ctx.newPrefix() }, 1)),
    control: ctx.defer(await openEngine({ db: controlDb, prefix: ctx.newPrefix() }, 1)),
    off: ctx.defer(await openEngine({ db: offDb, prefix: ctx.newPrefix(), asOwner: true }, 1)),
  };
  const r = ctx.plan.rls;
  const results = { on: [], off: [], control: [] } as Required<NonNullable<Results['rls']>>;
  ctx.results.rls = results;
  const order = ['on', 'off', 'control'] as const;
  for (let i = 0; i < r.rounds; i++) {
    // Each side takes each place in the round's order equally often (over every 3 rounds).
    for (let k = 0; k < order.length; k++) {
      const side = order[(i + k) % order.length]!;
      results[side].push(await targets[side].run({ total: r.total, inFlight: r.inFlight, warmup: i === 0 ? 20 : 0, maxMs: r.maxMs, accounting: false }));
    }
  }
};

export const recoveryPhase: Phase = async (ctx) => {
  ctx.results.recovery = await measureRecovery({ db: await ctx.dbs.clone('recovery'), prefix: ctx.newPrefix() }, ctx.plan.recoveryKills);
};

export const floorPhase: Phase = async (ctx) => {
  ctx.results.floor = await measureFloor(await ctx.dbs.clone('floor'), ctx.plan.floor.seconds, ctx.plan.floor.clients);
};

/** Step latency as the tables grow (seeded rows) and as runs spread over 1 or 1,000 tenants. */
export const dataPhase: Phase = async (ctx) => {
  const db = await ctx.dbs.clone('data');
  const engine = ctx.defer(await openEngine({ db, prefix: ctx.newPrefix() }, 1));
  const d = ctx.plan.data;
  const one = [randomUUID()];
  const many = Array.from({ length: d.tenants }, (_, i) => seedTenant(i));
  // Runs go round-robin over the tenants, one each: the measured runs reach min(runs, tenants) of them.
  const point = async (rows: number, tenants: string[], warmup?: number) => {
    const m = await engine.run({ total: d.runs, inFlight: d.inFlight, maxMs: d.maxMs, tenants, accounting: false, ...(warmup === undefined ? {} : { warmup }) });
    return { rows, tenants: tenants.length, tenantsWithRuns: Math.min(tenants.length, m.result.runs), m };
  };
  const data: NonNullable<Results['data']> = (ctx.results.data = []);
  data.push(await point(await rowCount(db, 'durable_runs'), one, 20));
  for (const size of d.sizes) {
    ctx.progress(`  seeding to ${size.toLocaleString('en')} rows`);
    const rows = await seedRows(db, size, d.tenants);
    data.push(await point(rows, one, 0));
    data.push(await point(rows, many, 0));
  }
};

export const PHASES: Record<string, Phase> = {
  compare: comparePhase,
  deep: deepPhase,
  e2e: e2ePhase,
  rls: rlsPhase,
  recovery: recoveryPhase,
  floor: floorPhase,
  data: dataPhase,
};
