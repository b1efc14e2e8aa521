import type { LoopResult } from './lib/closed-loop.ts';
import type { MachineInfo } from './lib/machine.ts';
import type { Measured } from './lib/measure.ts';
import type { Latency } from './lib/stats.ts';
import { median, round } from './lib/stats.ts';
import type { Plan } from './plan.ts';
import type { RecoveryResult } from './scenarios/recovery.ts';
import type { FloorResult } from './scenarios/floor.ts';
import type { FixedRateResult } from './scenarios/http.ts';
import type { SweepResult } from './scenarios/sweep.ts';

type M = Measured<LoopResult>;

export interface Results {
  plan: Plan;
  machine?: MachineInfo;
  settings: { workerConcurrency: number; poolMax: number; lockDurationMs: number; stalledIntervalMs: number; workerNodeFlags: string; /** Absent in reports before session 13. */ groupCommitInFlight?: number; /** The worker's launch environment (MALLOC_ARENA_MAX); absent before session 43. */ workerEnv?: string };
  errors: Record<string, string>;
  seconds?: number;
  compare?: { engine: M[]; dbos: M[]; raw: M[] };
  inFlight?: { light?: M; deep?: M };
  workers?: Record<number, M>;
  e2e?: M;
  idempotency?: { withKey: Latency; withoutKey: Latency; deltaP50: number };
  fixedRate?: FixedRate;
  fixedRateApiAlone?: FixedRate;
  /** control: a second RLS-on side identical to `on` (A/A), absent in reports of earlier versions. */
  rls?: { on: M[]; off: M[]; control?: M[] };
  recovery?: RecoveryResult;
  floor?: FloorResult;
  /** tenantsWithRuns: how many of the tenants the measured runs came from (round-robin); absent in reports before session 26. */
  data?: Array<{ rows: number; tenants: number; tenantsWithRuns?: number; m: M }>;
  /** One recovery sweep over a backlog whose jobs all wait in Redis; absent in reports before session 13. */
  sweep?: SweepResult;
}

type FixedRate = Omit<FixedRateResult, 'cpuMs' | 'wallMs' | 'machine'> & Partial<Pick<FixedRateResult, 'cpuMs' | 'wallMs' | 'machine'>>;
type Cell = number | string | undefined;

/**
 * How busy the machine was during a fixed-rate window: CPUs used by the whole stack (of the machine's),
 * and by each part. Older reports did not measure it.
 */
function busy(f: FixedRate | undefined, cpus: number | undefined): string | undefined {
  if (!f?.cpuMs || !f.wallMs) return undefined;
  const c = f.cpuMs;
  const wall = f.wallMs;
  const of = (ms: number) => round(ms / wall, 2);
  const total = c.api + c.workers + c.postgres + (Number.isFinite(c.redis) ? c.redis : 0) + c.loadGenerator;
  const parts: Array<[string, number]> = [['API', c.api], ['worker', c.workers], ['PostgreSQL', c.postgres], ['Redis', c.redis], ['load generator', c.loadGenerator]];
  // A part that did not run (the workers of the API-alone window) is left out, not shown as 0.
  const shown = parts.filter(([name, ms]) => name !== 'worker' || ms > 0).map(([name, ms]) => `${name} ${of(ms)}`);
  return `${of(total)}${cpus ? ` of ${cpus}` : ''} (${shown.join(', ')})`;
}

/**
 * What else held the machine up during a fixed-rate window, to tell a disturbed window from a quiet
 * one: CPU and I/O pressure (ms stalled per second), WAL flushes and writes per second (cluster-wide)
 * and the mean flush time when track_wal_io_timing is on. Older reports did not measure it.
 */
function pressure(f: FixedRate | undefined): string | undefined {
  const m = f?.machine;
  if (!m) return undefined;
  const perSec = (n: number) => round(n / (m.ms / 1000));
  const psi = (v: number | null) => (v === null ? 'n/a' : round(v));
  const syncMs = m.walSyncMs === null ? 'n/a (track_wal_io_timing off)' : m.walSyncs ? round(m.walSyncMs / m.walSyncs, 2) : '—';
  return `${psi(m.cpuPressureMsPerSec)}, ${psi(m.ioPressureMsPerSec)}, ${perSec(m.walSyncs)} / ${perSec(m.walWrites)}, ${syncMs}`;
}

/** "0 of 3000 refused", or "1546 of 3000 refused: 503×1546" (503: load shedding, 429: rate limit). */
function failures(f: FixedRate): string {
  const bad = Object.entries(f.statuses).filter(([st]) => st !== '202');
  return `${f.failed} of ${f.sent} refused${bad.length ? `: ${bad.map(([st, n]) => `${st}×${n}`).join(', ')}` : ''}`;
}
export interface Row {
  section: string;
  figure: string;
  ours?: Cell;
  dbos?: Cell;
  bullmq?: Cell;
  oursPerDbos?: number;
  oursPerBullmq?: number;
  target?: string;
  status?: 'PASS' | 'MISS' | 'n/a';
}

export interface Report {
  generatedAt: string;
  mode: Plan['mode'];
  seconds: number | undefined;
  machine: MachineInfo | undefined;
  settings: Results['settings'];
  rows: Row[];
  targets: Array<{ figure: string; target: string; value: number | undefined; status: Row['status'] }>;
  errors: Record<string, string>;
  raw: Omit<Results, 'machine' | 'errors' | 'settings'>;
}

const GOLDEN_PATH_STEPS = 4;
const avg = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : Number.NaN);
const MB = 1024 * 1024;
const perRun = (m: M | undefined, v: (m: M) => number) => (m && m.result.runs ? v(m) / m.result.runs : undefined);
const cpuPerRun = (m: M | undefined) => perRun(m, (x) => x.workerCpuMs + x.otherCpuMs + x.localCpuMs);

/** Mean of a figure over the comparison rounds. */
function mean(ms: M[] | undefined, f: (m: M) => number): number | undefined {
  if (!ms?.length) return undefined;
  return avg(ms.map(f));
}

function status(value: number | undefined, ok: (v: number) => boolean): Row['status'] {
  if (value === undefined || !Number.isFinite(value)) return 'n/a';
  return ok(value) ? 'PASS' : 'MISS';
}

export function buildReport(r: Results): Report {
  const rows: Row[] = [];
  const targets: Report['targets'] = [];
  const target = (figure: string, t: string, value: number | undefined, ok: (v: number) => boolean) => {
    const s = status(value, ok);
    targets.push({ figure, target: t, value: value === undefined ? undefined : round(value, 3), status: s });
    return s;
  };
  const add = (row: Row) => rows.push(row);
  const c = r.compare;
  const rounds = c ? ` (${c.engine.length} round${c.engine.length > 1 ? 's' : ''}, mean)` : '';

  // 1. Ours end to end
  const e = r.e2e;
  const s1 = `1 ours end to end: HTTP + Idempotency-Key + RLS, 1 API + 1 worker, ${r.plan.e2e.inFlight} in flight from 50 tenants`;
  add({ section: s1, figure: 'runs/s', ours: e?.result.runsPerSec });
  add({ section: s1, figure: 'POST latency p50 / p99, ms', ours: e ? `${round(e.result.start.p50)} / ${round(e.result.start.p99)}` : undefined });
  add({ section: s1, figure: 'submit→complete p50 / p99, ms', ours: e ? `${round(e.result.e2e.p50)} / ${round(e.result.e2e.p99)}` : undefined });
  add({ section: s1, figure: 'DB transactions per run (pg_stat_database)', ours: perRun(e, (m) => m.xactCommit) });
  add({ section: s1, figure: 'DB round trips per run (pg client calls)', ours: perRun(e, (m) => m.roundTrips) });
  add({ section: s1, figure: 'CPU ms per run (API + worker + load generator)', ours: cpuPerRun(e) });
  add({ section: s1, figure: 'worker RSS peak, MB', ours: e ? e.workerRssMax / MB : undefined });

  // 2-4. Like for like
  const s2 = `2-4 like for like: engine only vs DBOS vs raw BullMQ, one process each, ${r.plan.compare.inFlight} in flight${rounds}`;
  const eng = mean(c?.engine, (m) => m.result.runsPerSec);
  const dbos = mean(c?.dbos, (m) => m.result.runsPerSec);
  const raw = mean(c?.raw, (m) => m.result.runsPerSec);
  add({ section: s2, figure: 'runs (workflows, flows) per second', ours: eng, dbos, bullmq: raw, oursPerDbos: eng && dbos ? eng / dbos : undefined, oursPerBullmq: eng && raw ? eng / raw : undefined });
  const lat = (ms: M[] | undefined) => (ms?.length ? `${round(mean(ms, (m) => m.result.e2e.p50)!)} / ${round(mean(ms, (m) => m.result.e2e.p99)!)}` : undefined);
  add({ section: s2, figure: 'start→complete p50 / p99, ms', ours: lat(c?.engine), dbos: lat(c?.dbos), bullmq: lat(c?.raw) });
  const x = (ms: M[] | undefined, f: (m: M) => number | undefined) => mean(ms, (m) => f(m) ?? Number.NaN);
  add({ section: s2, figure: 'DB transactions per run', ours: x(c?.engine, (m) => perRun(m, (y) => y.xactCommit)), dbos: x(c?.dbos, (m) => perRun(m, (y) => y.xactCommit)), bullmq: 0 });
  add({ section: s2, figure: 'DB round trips per run', ours: x(c?.engine, (m) => perRun(m, (y) => y.roundTrips)), dbos: x(c?.dbos, (m) => perRun(m, (y) => y.roundTrips)), bullmq: 0 });
  const cpuE = x(c?.engine, cpuPerRun);
  const cpuD = x(c?.dbos, cpuPerRun);
  const cpuR = x(c?.raw, cpuPerRun);
  add({ section: s2, figure: 'Node CPU ms per run (workers + starter)', ours: cpuE, dbos: cpuD, bullmq: cpuR, oursPerDbos: cpuE && cpuD ? cpuE / cpuD : undefined, oursPerBullmq: cpuE && cpuR ? cpuE / cpuR : undefined });
  const pgE = x(c?.engine, (m) => perRun(m, (y) => y.pgCpuMs));
  const pgD = x(c?.dbos, (m) => perRun(m, (y) => y.pgCpuMs));
  add({ section: s2, figure: 'PostgreSQL backend CPU ms per run', ours: pgE, dbos: pgD, bullmq: 0 });
  const rdE = x(c?.engine, (m) => perRun(m, (y) => y.redisCpuMs));
  const rdD = x(c?.dbos, (m) => perRun(m, (y) => y.redisCpuMs));
  const rdR = x(c?.raw, (m) => perRun(m, (y) => y.redisCpuMs));
  add({ section: s2, figure: 'Redis server CPU ms per run (shared instance)', ours: rdE, dbos: rdD, bullmq: rdR });
  const totE = (cpuE ?? 0) + (pgE ?? 0) + (rdE ?? 0);
  const totD = (cpuD ?? 0) + (pgD ?? 0) + (rdD ?? 0);
  const totR = (cpuR ?? 0) + (rdR ?? 0);
  add({ section: s2, figure: 'all CPU ms per run (Node + PostgreSQL + Redis)', ours: totE || undefined, dbos: totD || undefined, bullmq: totR || undefined, oursPerDbos: totE && totD ? totE / totD : undefined, oursPerBullmq: totE && totR ? totE / totR : undefined });
  // One process each: its JavaScript runs on its main thread, so that thread's time running plus
  // waiting for a CPU near the whole wall time means the process is what paces the target.
  const thread = (ms: M[] | undefined) => {
    const run = x(ms, (m) => (m.workerMainThread && m.workerMainThread.runMs + m.workerMainThread.waitMs > 0 ? m.workerMainThread.runMs / m.wallMs : undefined));
    const wait = x(ms, (m) => (m.workerMainThread && m.workerMainThread.runMs + m.workerMainThread.waitMs > 0 ? m.workerMainThread.waitMs / m.wallMs : undefined));
    return run !== undefined && Number.isFinite(run) ? `${round(run, 2)} / ${round(wait!, 2)}` : undefined;
  };
  add({ section: s2, figure: "worker process's main thread: running / waiting for a CPU, share of the wall time", ours: thread(c?.engine), dbos: thread(c?.dbos), bullmq: thread(c?.raw) });
  const commits = (ms: M[] | undefined) => x(ms, (m) => (m.xactCommit / m.wallMs) * 1000);
  add({ section: s2, figure: 'DB commits/s during the run (compare with the floor, section 7)', ours: commits(c?.engine), dbos: commits(c?.dbos), bullmq: 0 });
  add({ section: s2, figure: 'Redis commands sent per run (socket writes)', ours: x(c?.engine, (m) => perRun(m, (y) => y.redisWrites)), dbos: 0, bullmq: x(c?.raw, (m) => perRun(m, (y) => y.redisWrites)) });
  add({ section: s2, figure: 'step p50 / p99, ms (ours: one step and its commit, inside a run job)', ours: c?.engine.length ? `${round(mean(c.engine, (m) => m.step.p50)!)} / ${round(mean(c.engine, (m) => m.step.p99)!)}` : undefined });
  add({ section: s2, figure: 'steps replayed from a checkpoint (duplicate deliveries)', ours: mean(c?.engine, (m) => m.replays) });
  add({ section: s2, figure: 'process RSS peak, MB', ours: mean(c?.engine, (m) => m.workerRssMax / MB), dbos: mean(c?.dbos, (m) => m.workerRssMax / MB), bullmq: mean(c?.raw, (m) => m.workerRssMax / MB) });
  add({ section: s2, figure: 'TARGET engine runs/s ÷ DBOS workflows/s', ours: eng && dbos ? eng / dbos : undefined, target: '>= 2.0', status: target('engine-only runs/s ÷ DBOS workflows/s', '>= 2.0', eng && dbos ? eng / dbos : undefined, (v) => v >= 2) });
  add({ section: s2, figure: 'TARGET engine runs/s ÷ raw BullMQ flows/s', ours: eng && raw ? eng / raw : undefined, target: '>= 0.5', status: target('engine-only runs/s ÷ raw BullMQ flows/s', '>= 0.5', eng && raw ? eng / raw : undefined, (v) => v >= 0.5) });

  // 5. Overheads
  const s5 = '5 overheads';
  // The figure reads a run's step time: the sum over the workflow's steps of each step's p50 in a round
  // (the first step also reads the run: two round trips where the others take one), the median of that
  // over the rounds, RLS on against off. A p50 of all steps pooled sits on whichever kind is the
  // majority and jumps between the kinds' levels (sessions 8–9); reports without per-step
  // durations fall back to it.
  const rlsSides = r.rls;
  const bySeq = (m: M) => Object.entries(m.stepBySeq ?? {}).sort(([a], [b]) => Number(a) - Number(b));
  const perStep = !!rlsSides?.on.length && [...rlsSides.on, ...rlsSides.off].every((m) => bySeq(m).length > 0);
  const runStepMs = (m: M) => (perStep ? bySeq(m).reduce((sum, [, l]) => sum + l.p50, 0) : m.step.p50);
  const side = (ms: M[] | undefined) => (ms?.length ? median(ms.map(runStepMs)) : undefined);
  const rlsOn = side(rlsSides?.on);
  const rlsOff = side(rlsSides?.off);
  const rlsControl = side(rlsSides?.control);
  const rlsPct = rlsOn !== undefined && rlsOff !== undefined ? (rlsOn / rlsOff - 1) * 100 : undefined;
  const rlsRounds = `${r.plan.rls.inFlight} in flight, ${rlsSides?.on.length ?? 0} rounds`;
  add({
    section: s5,
    figure: perStep ? `a run's step time (Σ of its steps' p50s) ms, RLS on (app role) / off (owner, NO FORCE), ${rlsRounds}` : `step p50 ms, RLS on (app role) / off (owner, NO FORCE), ${rlsRounds}`,
    ours: rlsOn !== undefined ? `${round(rlsOn, 2)} / ${round(rlsOff ?? Number.NaN, 2)}` : undefined,
  });
  if (perStep && rlsSides) {
    const seqs = [...new Set([...rlsSides.on, ...rlsSides.off].flatMap((m) => bySeq(m).map(([seq]) => seq)))].sort((a, b) => Number(a) - Number(b));
    const p50Of = (ms: M[], seq: string) => median(ms.map((m) => m.stepBySeq?.[Number(seq)]?.p50 ?? Number.NaN).filter(Number.isFinite));
    add({
      section: s5,
      figure: '  by step: p50 ms RLS on / off (median over the rounds; step 1 also moves the run and reads the policy step 3 uses)',
      ours: seqs.map((seq) => `${seq}: ${round(p50Of(rlsSides.on, seq), 2)} / ${round(p50Of(rlsSides.off, seq), 2)}`).join(', '),
    });
    add({ section: s5, figure: '  all steps pooled: step p50 ms, RLS on / off (the figure read until session 9)', ours: `${round(median(rlsSides.on.map((m) => m.step.p50)), 2)} / ${round(median(rlsSides.off.map((m) => m.step.p50)), 2)}` });
  }
  const pgStep = (ms: M[] | undefined) => (ms?.length ? median(ms.map((m) => (m.step.n ? m.pgCpuMs / m.step.n : Number.NaN))) : undefined);
  const pgControl = pgStep(rlsSides?.control);
  add({
    section: s5,
    figure: 'PostgreSQL CPU ms per step, RLS on / off (/ the A/A control side)',
    ours: rlsSides?.on.length ? `${round(pgStep(rlsSides.on)!, 2)} / ${round(pgStep(rlsSides.off)!, 2)}${pgControl !== undefined ? ` (/ ${round(pgControl, 2)})` : ''}` : undefined,
  });
  add({
    section: s5,
    figure: 'engine runs/s, RLS on / off',
    ours: rlsSides?.on.length ? `${round(median(rlsSides.on.map((m) => m.result.runsPerSec)))} / ${round(median(rlsSides.off.map((m) => m.result.runsPerSec)))}` : undefined,
  });
  add({
    section: s5,
    figure: `A/A control: ${perStep ? "a run's step time" : 'step p50'} ms of a second RLS-on side, its difference from the first, % (the method's resolution)`,
    ours: rlsControl !== undefined && rlsOn !== undefined ? `${round(rlsControl, 2)}, ${round((rlsOn / rlsControl - 1) * 100, 1)} %` : undefined,
  });
  // The method's resolution: two identical RLS-on sides differing by more than the target's 10 % cannot
  // tell 10 % apart from noise, so the target is not judged (n/a: the budget counts it not measured).
  const aaPct = rlsControl !== undefined && rlsOn !== undefined ? (rlsOn / rlsControl - 1) * 100 : undefined;
  const rlsResolved = aaPct === undefined || Math.abs(aaPct) <= 10;
  add({
    section: s5,
    figure: rlsResolved ? 'TARGET RLS overhead per step, %' : `TARGET RLS overhead per step, % (not judged: the A/A control differs by ${round(aaPct!, 1)} %, more than the 10 % it would tell)`,
    ours: rlsPct,
    target: '<= 10 %',
    status: target('RLS overhead per step (%)', '<= 10 %', rlsResolved ? rlsPct : undefined, (v) => v <= 10),
  });
  const idem = r.idempotency;
  add({ section: s5, figure: 'POST p50 ms, with key / without (sequential pairs)', ours: idem ? `${round(idem.withKey.p50, 2)} / ${round(idem.withoutKey.p50, 2)}` : undefined });
  add({ section: s5, figure: 'TARGET idempotency overhead per POST at p50, ms', ours: idem?.deltaP50, target: '<= 1 ms', status: target('idempotency overhead per POST at p50 (ms)', '<= 1 ms', idem?.deltaP50, (v) => v <= 1) });
  const fr = r.fixedRate;
  add({
    section: s5,
    figure: `POST p50 / max ms at ${r.plan.fixedRate.rps}/s from 50 tenants for ${r.plan.fixedRate.seconds} s, 1 worker running (sent rate, refusals)`,
    ours: fr ? `${round(fr.post.p50)} / ${round(fr.post.max)} (${round(fr.achievedRate)}/s, ${failures(fr)})` : undefined,
  });
  add({ section: s5, figure: `TARGET POST p99 at ${r.plan.fixedRate.rps} submissions/s (a worker running on the same machine), ms`, ours: fr?.post.p99, target: '<= 20 ms', status: target('POST p99 at 200 submissions/s (ms), every POST accepted', '<= 20 ms', fr?.post.p99, (v) => v <= 20 && fr?.failed === 0) });
  add({ section: s5, figure: `  CPUs busy during that window (API, worker, PostgreSQL, Redis, load generator)`, ours: busy(fr, r.machine?.cpus) });
  add({ section: s5, figure: `  machine during that window: CPU pressure (some) ms/s, I/O pressure (some) ms/s, WAL syncs / writes per s (cluster-wide), ms per WAL sync`, ours: pressure(fr) });
  const capacity = r.e2e?.result.runsPerSec;
  add({
    section: s5,
    figure: `  ${r.plan.fixedRate.rps}/s as a share of the whole stack's capacity on this machine (section 1's closed loop, runs/s)`,
    ours: capacity ? `${round((r.plan.fixedRate.rps / capacity) * 100)} % (of ${round(capacity)})` : undefined,
  });
  const alone = r.fixedRateApiAlone;
  add({
    section: s5,
    figure: `POST p50 / p99 ms at ${r.plan.fixedRate.rps}/s, API alone (workers stopped; sent rate, refusals)`,
    ours: alone ? `${round(alone.post.p50)} / ${round(alone.post.p99)} (${round(alone.achievedRate)}/s, ${failures(alone)})` : undefined,
  });
  add({ section: s5, figure: `  CPUs busy during that window (API, PostgreSQL, Redis, load generator)`, ours: busy(alone, r.machine?.cpus) });
  add({ section: s5, figure: `  machine during that window: CPU pressure (some) ms/s, I/O pressure (some) ms/s, WAL syncs / writes per s (cluster-wide), ms per WAL sync`, ours: pressure(alone) });

  // 6. Recovery
  const rec = r.recovery;
  const s6 = `6 recovery after SIGKILL mid-step (${rec?.kills ?? 0} kills; lock ${rec?.settings.lockDurationMs ?? '?'} ms, stalled check ${rec?.settings.stalledIntervalMs ?? '?'} ms)`;
  add({ section: s6, figure: 'kill → step re-delivered to another worker (lock expiry + stalled check), median s', ours: rec?.redeliveredMedian });
  add({ section: s6, figure: 'kill → next checkpoint by another worker, max s', ours: rec?.max });
  add({ section: s6, figure: 'every run completed, one checkpoint per step', ours: rec ? (rec.allCompleted ? 'yes' : 'NO') : undefined });
  // A fast handover that lost a run or checkpointed a step twice is no recovery (as a refused POST is not a fast one).
  add({ section: s6, figure: 'TARGET recovery median, s', ours: rec?.median, target: '<= 3 s', status: target('recovery after SIGKILL, median (s), every run completed once', '<= 3 s', rec?.median, (v) => v <= 3 && rec?.allCompleted === true) });

  // 7. Floor
  const f = r.floor;
  const s7 = `7 the floor: pgbench -N, ${f?.seconds ?? '?'} s, same server`;
  for (const [k, v] of Object.entries(f?.tps ?? {})) add({ section: s7, figure: `commits/s, ${k.slice(1)} client(s)`, ours: v });
  const commitsPerSec = eng !== undefined && c?.engine.length ? eng * (x(c.engine, (m) => perRun(m, (y) => y.xactCommit)) ?? 0) : undefined;
  add({ section: s7, figure: 'engine commits/s at the like-for-like load (runs/s × tx/run)', ours: commitsPerSec });

  // 8. Growth
  const s8 = '8 growth';
  const g = (m: M | undefined) => (m ? `${round(m.result.runsPerSec)} runs/s, ${round(m.result.e2e.p50)} / ${round(m.result.e2e.p99)} ms` : undefined);
  add({ section: s8, figure: '10 in flight, 1 worker: runs/s, start→complete p50 / p99', ours: g(r.inFlight?.light) });
  add({ section: s8, figure: '100 in flight, 1 worker', ours: g(c?.engine[0]) });
  // At 1,000 in flight a run first waits in the queue behind the others for a job slot, so a short
  // window ends with many runs part-way: throughput is counted in executed steps (÷ 4), and the
  // latency follows from Little's law (in flight ÷ throughput).
  const deep = r.inFlight?.deep;
  const deepRate = deep ? deep.step.n / GOLDEN_PATH_STEPS / (deep.wallMs / 1000) : undefined;
  add({
    section: s8,
    figure: `1,000 in flight, 1 worker (${round((r.plan.inFlight.deep.windowMs ?? 0) / 1000)} s window): steps/4 per s, latency by Little's law`,
    ours: deepRate ? `${round(deepRate)} runs/s, ~${round(1000 / deepRate, 1)} s per run` : undefined,
  });
  for (const [n, m] of Object.entries(r.workers ?? {})) {
    add({ section: s8, figure: `${n} worker process${n === '1' ? ' (the like-for-like run)' : 'es'}, ${r.plan.workers.inFlight} in flight`, ours: g(m) });
  }
  for (const d of r.data ?? []) {
    const reached = d.tenantsWithRuns !== undefined && d.tenantsWithRuns < d.tenants ? ` (runs from ${d.tenantsWithRuns} of them)` : '';
    add({ section: s8, figure: `step p50 / p99 ms, ${d.rows.toLocaleString('en')} runs in the table, ${d.tenants} tenant(s)${reached}`, ours: `${round(d.m.step.p50, 2)} / ${round(d.m.step.p99, 2)}` });
  }
  add({ section: s8, figure: '1,000 in flight: steps replayed from a checkpoint (duplicate deliveries, sweeper)', ours: r.inFlight?.deep?.replays });
  const sw = r.sweep;
  add({
    section: s8,
    figure: `one recovery sweep over a backlog of ${(sw?.examined ?? r.plan.inFlight.deep.sweepBacklog ?? 0).toLocaleString('en')} incomplete runs, each with a live job (workers stopped): ms, PostgreSQL round trips, Redis writes, re-enqueued`,
    ours: sw ? `${round(sw.ms)} ms, ${sw.pgRoundTrips}, ${sw.redisWrites}, ${sw.reenqueued}` : undefined,
  });
  const deepRss = r.inFlight?.deep ? r.inFlight.deep.workerRssMax / MB : undefined;
  add({ section: s8, figure: 'TARGET worker RSS with 1,000 runs in flight, MB', ours: deepRss, target: '<= 200 MB', status: target('worker RSS with 1,000 runs in flight (MB)', '<= 200 MB', deepRss, (v) => v <= 200) });

  const { machine, errors, settings, ...measurements } = r;
  return { generatedAt: new Date().toISOString(), mode: r.plan.mode, seconds: r.seconds, machine, settings, rows, targets, errors, raw: measurements };
}

const fmt = (v: Cell): string => {
  if (v === undefined) return '—';
  if (typeof v === 'string') return v;
  if (!Number.isFinite(v)) return '—';
  const a = Math.abs(v);
  return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(2);
};

export function renderTable(rep: Report): string {
  const m = rep.machine;
  const head = [
    `Dealix benchmark (${rep.mode}${rep.mode === 'quick' ? `: shortened phases, transaction counts after ${(rep.raw.plan.statsSettleMs ?? 1_500) / 1000} s of quiet (they read low), ${rep.raw.plan.recoveryKills} kills, at most ${rep.raw.plan.data.sizes.at(-1)?.toLocaleString('en')} seeded rows instead of 1,000,000` : ''}) — ${rep.generatedAt}, ${rep.seconds ?? '?'} s`,
    m
      ? `machine: ${m.cpus} CPU (${m.cpuModel}), ${m.memoryGiB} GiB; Node ${m.node}; PostgreSQL ${m.postgres} (synchronous_commit=${m.postgresSettings.synchronous_commit}, fsync=${m.postgresSettings.fsync}); Redis ${m.redis}; load average ${m.loadAverageAtStart.join(' ')} → ${m.loadAverageAtEnd?.join(' ') ?? '?'}`
      : '',
    `ours: WORKER_CONCURRENCY=${rep.settings.workerConcurrency}, DATABASE_POOL_MAX=${rep.settings.poolMax}${rep.settings.groupCommitInFlight === undefined ? '' : `, DATABASE_GROUP_COMMIT_IN_FLIGHT=${rep.settings.groupCommitInFlight}`}, lock ${rep.settings.lockDurationMs} ms, stalled check ${rep.settings.stalledIntervalMs} ms, worker ${rep.settings.workerEnv ? `${rep.settings.workerEnv} ` : ''}node ${rep.settings.workerNodeFlags || '(no flags)'}`,
  ];
  const cols = ['figure', 'ours', 'DBOS', 'raw BullMQ', 'ours÷DBOS', 'ours÷BullMQ', 'target', 'status'];
  const body: string[][] = [];
  let section = '';
  const sectionRows: number[] = [];
  for (const r of rep.rows) {
    if (r.section !== section) {
      section = r.section;
      sectionRows.push(body.length);
      body.push([section, '', '', '', '', '', '', '']);
    }
    body.push([`  ${r.figure}`, fmt(r.ours), fmt(r.dbos), fmt(r.bullmq), fmt(r.oursPerDbos), fmt(r.oursPerBullmq), r.target ?? '', r.status ?? '']);
  }
  const widths = cols.map((c, i) => Math.max(c.length, ...body.filter((_, j) => !sectionRows.includes(j)).map((row) => row[i]!.length)));
  const line = (cells: string[]) => cells.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join(' | ');
  const sep = widths.map((w) => '-'.repeat(w)).join('-+-');
  const out = [...head.filter(Boolean), '', line(cols), sep];
  body.forEach((row, j) => out.push(sectionRows.includes(j) ? row[0]! : line(row)));
  const passed = rep.targets.filter((t) => t.status === 'PASS').length;
  out.push(sep, `targets: ${passed} of ${rep.targets.length} PASS`);
  for (const [phase, err] of Object.entries(rep.errors)) out.push(`ERROR in phase ${phase}: ${err.split('\n')[0]}`);
  return out.join('\n');
}
