/**
 * npm run bench:pairs -- --a="WORKER_CONCURRENCY=8" --b="WORKER_CONCURRENCY=16" [--rounds=6] [--total=2500]
 * npm run bench:pairs -- --a-root=/tmp/old [--b-root=/tmp/new]     # two commits: see below
 *
 * Two engine-only targets that differ only in the worker's settings (environment overrides, as
 * BENCH_OURS_ENV takes them) or in their code, each with its own database clone and queue prefix, measured in
 * alternating rounds (ABBA…) in one process: on a VM whose speed drifts from minute to minute, a
 * setting's or a commit's effect is read from pairs of rounds taken moments apart, not from two runs minutes
 * apart (session 40 read a "regression" of a fifth from separate compare-only runs that alternating rounds of the
 * same two commits put at 0–4 %: docs/performance-history.md, *What was changed*, session 41).
 * `--a-root`/`--b-root` (default: this checkout): a side's worker, its database (that checkout's migrations)
 * and its starter come from another checkout, e.g. `git worktree add /tmp/old <commit>` with this
 * checkout's node_modules linked into it (`ln -s "$PWD/node_modules" /tmp/old/`) when package-lock.json is
 * the same; that checkout's test/bench must export what this script uses (BenchDatabases, deletePrefix,
 * newPrefix, openEngine: every commit since session 11).
 * A checkout before session 43 starts its workers without the launch line's MALLOC_ARENA_MAX=2 (productionEnv):
 * pass `--a="MALLOC_ARENA_MAX=2"` for that side to compare code alone.
 * Prints each round (runs/s; CPU per run of the worker, producer, PostgreSQL and Redis together;
 * PostgreSQL's alone; the worker process's alone, what the engine's throughput follows; the whole
 * machine's, from /proc/stat) and each side's means. Used for the
 * concurrency decision in docs/performance-history.md; everything it creates is removed at the end.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { BenchDatabases } from './lib/bench-db.ts';
import type { EngineTarget } from './scenarios/engine.ts';
import { ROOT } from './lib/children.ts';

const arg = (name: string, fallback: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? fallback;
const settings = (s: string): Record<string, string> => Object.fromEntries(s.split(',').filter(Boolean).map((kv) => kv.split('=', 2) as [string, string]));
const sides = [settings(arg('a', '')), settings(arg('b', ''))] as const;
const roots = [resolve(arg('a-root', ROOT)), resolve(arg('b-root', ROOT))] as const;
/** A checkout's bench modules (this checkout's own when `root` is it: the same module instances). */
async function benchOf(root: string) {
  const at = (path: string) => import(pathToFileURL(`${root}/test/bench/${path}`).href);
  const [db, phases, engine] = await Promise.all([at('lib/bench-db.ts'), at('phases.ts'), at('scenarios/engine.ts')]);
  return {
    BenchDatabases: db.BenchDatabases as typeof BenchDatabases,
    deletePrefix: db.deletePrefix as (prefix: string) => Promise<number>,
    newPrefix: phases.newPrefix as () => string,
    openEngine: engine.openEngine as typeof import('./scenarios/engine.ts').openEngine,
  };
}
const rounds = Number(arg('rounds', '6'));
const total = Number(arg('total', '2500'));

/** Busy CPU time of the whole machine so far, ms (user, nice, system, irq, softirq, steal). */
function machineBusyMs(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  return (f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + f[7]!) * 10;
}

// One set of databases per checkout (each migrated by its own migrations); sides of one checkout share it.
const benches = new Map<string, { bench: Awaited<ReturnType<typeof benchOf>>; dbs: BenchDatabases }>();
const prefixes: Array<{ prefix: string; deletePrefix: (prefix: string) => Promise<number> }> = [];
const targets: EngineTarget[] = [];
try {
  for (const [i, env] of sides.entries()) {
    const root = roots[i]!;
    let b = benches.get(root);
    if (!b) {
      const bench = await benchOf(root);
      b = { bench, dbs: new bench.BenchDatabases() };
      benches.set(root, b);
      await b.dbs.init();
    }
    const prefix = b.bench.newPrefix();
    prefixes.push({ prefix, deletePrefix: b.bench.deletePrefix });
    targets.push(await b.bench.openEngine({ db: await b.dbs.clone(`pair${i}`), prefix }, 1, env));
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
    console.log(`${i ? 'B' : 'A'} mean\t${means.map((x) => x.toFixed(2)).join('\t')}\t${JSON.stringify(sides[i])}${roots[0] === roots[1] ? '' : `\t${roots[i]}`}`);
  }
} finally {
  await Promise.allSettled(targets.map((t) => t.close()));
  for (const { dbs } of benches.values()) await dbs.dropAll();
  for (const p of prefixes) await p.deletePrefix(p.prefix).catch(() => 0);
}
process.exit(0);
