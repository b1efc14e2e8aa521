/**
 * npm run bench:pairs -- --a="WORKER_CONCURRENCY=8" --b="WORKER_CONCURRENCY=16" [--rounds=6] [--total=2500]
 *
 * Two engine-only targets that differ only in the worker's settings (environment overrides, as
 * BENCH_OURS_ENV takes them), each with its own database clone and queue prefix, measured in
 * alternating rounds (ABBA…) in one process: on a VM whose speed drifts from minute to minute, a
 * setting's effect is read from pairs of rounds taken moments apart, not from two runs minutes apart.
 * Prints each round (runs/s; CPU per run of the worker, producer, PostgreSQL and Redis together;
 * PostgreSQL's alone; the worker process's alone, what the engine's throughput follows; the whole
 * machine's, from /proc/stat) and each side's means. Used for the
 * concurrency decision in docs/performance.md; everything it creates is removed at the end.
 */
import { readFileSync } from 'node:fs';
import { BenchDatabases, deletePrefix } from './lib/bench-db.ts';
import { newPrefix } from './phases.ts';
import { openEngine, type EngineTarget } from './scenarios/engine.ts';

const arg = (name: string, fallback: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? fallback;
const settings = (s: string): Record<string, string> => Object.fromEntries(s.split(',').filter(Boolean).map((kv) => kv.split('=', 2) as [string, string]));
const sides = [settings(arg('a', '')), settings(arg('b', ''))] as const;
const rounds = Number(arg('rounds', '6'));
const total = Number(arg('total', '2500'));

/** Busy CPU time of the whole machine so far, ms (user, nice, system, irq, softirq, steal). */
function machineBusyMs(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  return (f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + f[7]!) * 10;
}

const dbs = new BenchDatabases();
const prefixes: string[] = [];
const targets: EngineTarget[] = [];
try {
  await dbs.init();
  for (const [i, env] of sides.entries()) {
    const prefix = newPrefix();
    prefixes.push(prefix);
    targets.push(await openEngine({ db: await dbs.clone(`pair${i}`), prefix }, 1, env));
  }
  const rows: number[][][] = [[], []];
  console.log('side\truns/s\tCPU ms/run\tPostgreSQL ms/run\tworker ms/run\tmachine ms/run');
  for (let r = 0; r < rounds; r++) {
    for (const i of r % 2 ? [1, 0] : [0, 1]) {
      const m0 = machineBusyMs();
      const out = await targets[i]!.run({ total, inFlight: 100, warmup: 100, accounting: false });
      const n = out.result.runs;
      const row = [out.result.runsPerSec, (out.workerCpuMs + out.localCpuMs + out.pgCpuMs + out.redisCpuMs) / n, out.pgCpuMs / n, out.workerCpuMs / n, (machineBusyMs() - m0) / n];
      rows[i]!.push(row);
      console.log(`${i ? 'B' : 'A'}\t${row.map((x) => x.toFixed(2)).join('\t')}`);
    }
  }
  for (const [i, side] of rows.entries()) {
    const means = side[0]!.map((_, k) => side.reduce((s, x) => s + x[k]!, 0) / side.length);
    console.log(`${i ? 'B' : 'A'} mean\t${means.map((x) => x.toFixed(2)).join('\t')}\t${JSON.stringify(sides[i])}`);
  }
} finally {
  await Promise.allSettled(targets.map((t) => t.close()));
  await dbs.dropAll();
  for (const p of prefixes) await deletePrefix(p).catch(() => 0);
}
process.exit(0);
