/**
 * CPU per POST of the API alone (no workers): A/B of one or more checkouts, alternating. Not part of
 * `npm run bench`. Each checkout's test/bench/bench-api.ts runs as a child (production flags, its own
 * database clone and queue prefix); segments of POSTs at a fixed rate from fresh tenants are sent to
 * each in turn (the order alternating every round), and each segment reads the API's process.cpuUsage()
 * and its database's backends' CPU (/proc/<pid>/stat) per POST.
 *
 *   node test/bench/post-cpu.ts --roots=/tmp/base,/tmp/base,. --together --inflight=2 [--rounds=6] [--seconds=5] [--prof=DIR]
 *
 * --together runs every checkout's segment at the same time (the readings of a round share the machine's
 * load; on a busy machine the only comparison that held); --inflight sends a closed loop instead of a
 * fixed rate (no load shedding). List the base twice: the first API started read some 7 % more CPU per
 * POST than an identical second one (session 23), so compare against the second and read the first as
 * the A/A control. A worktree of the base needs node_modules (a symlink) and this file's lib/children.ts.
 * --prof starts each API with --cpu-prof (profiles written to DIR/<i> when it exits).
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { parseConfig } from '../../src/platform/config/config.ts';
import { signDevToken } from '../../src/platform/tenancy/jwt.ts';
import { BenchDatabases, ADMIN_URL, deletePrefix, type BenchDb } from './lib/bench-db.ts';
import { spawnChild, type Child } from './lib/children.ts';
import { ApiClient, GOLDEN_PATH_POST, openLoop } from './lib/http-load.ts';
import { procCpuMs } from './lib/measure.ts';
import { CLASS_A_SUBMISSION, oursEnv, productionNodeFlags } from './lib/ours.ts';
import { latency, round } from './lib/stats.ts';

const { values: args } = parseArgs({
  options: {
    roots: { type: 'string', default: '.' },
    rounds: { type: 'string', default: '6' },
    rate: { type: 'string', default: '200' },
    seconds: { type: 'string', default: '15' },
    warmup: { type: 'string', default: '1500' },
    tenants: { type: 'string', default: '50' },
    prof: { type: 'string' },
    together: { type: 'boolean', default: false },
    /** Extra node flags per root, '|'-separated in the order of --roots (e.g. "|--max-semi-space-size=32"). */
    nodeargs: { type: 'string', default: '' },
    /** Closed loop with this many POSTs in flight instead of a fixed rate (no shedding on a busy machine). */
    inflight: { type: 'string' },
  },
});
const roots = args.roots.split(',').map((r) => resolve(r));
const rate = Number(args.rate);
const seconds = Number(args.seconds);

interface Api {
  root: string;
  child: Child;
  db: BenchDb;
  client: ApiClient;
  env: Record<string, string>;
  samples: { cpu: number; pg: number; n: number; failed: number; p50: number; p99: number }[];
}

const dbs = new BenchDatabases();
await dbs.init();
const apis: Api[] = [];
/** Each API's queue prefix on the shared Redis: its POSTs' run jobs stay there (no worker takes them) until the end deletes them. */
const prefixes: string[] = [];
try {
  for (const [i, root] of roots.entries()) {
    const db = await dbs.clone(`cpu${i}`);
    const prefix = `postcpu${process.pid}x${i}`;
    prefixes.push(prefix);
    const env = oursEnv({ db, prefix });
    const extra = (args.nodeargs.split('|')[i] ?? '').split(/\s+/).filter(Boolean);
    const nodeArgs = [...productionNodeFlags('start:api'), ...extra, ...(args.prof ? ['--cpu-prof', `--cpu-prof-dir=${resolve(args.prof, String(i))}`] : [])];
    const child = spawnChild('test/bench/bench-api.ts', { name: `postcpu-${i}`, env, nodeArgs, cwd: root });
    const info = (await child.ready) as { port: number };
    apis.push({ root, child, db, client: new ApiClient(info.port), env, samples: [] });
  }
  const segment = async (api: Api, total: number) => {
    const config = parseConfig(api.env);
    const tokens = await Promise.all(Array.from({ length: Number(args.tenants) }, () => signDevToken(config, { tenantId: randomUUID(), sub: 'bench-submitter', roles: [] })));
    let next = 0;
    const pgPids = await backends(api.db.name);
    const pg0 = new Map(pgPids.map((p) => [p, procCpuMs(p)]));
    await api.child.stats(true);
    const proc0 = procTimes(api.child.pid);
    const fire = () => api.client.post(GOLDEN_PATH_POST, tokens[next++ % tokens.length]!, CLASS_A_SUBMISSION, randomUUID(), { allowErrors: true });
    const results = args.inflight ? await closed(Number(args.inflight), total, fire) : await openLoop({ rate, seconds: total / rate, fire });
    const stats = await api.child.stats<{ cpuMs: number; queries: number; redisWrites: number }>(true);
    const proc1 = procTimes(api.child.pid);
    let pgMs = 0;
    for (const p of await backends(api.db.name)) pgMs += procCpuMs(p) - (pg0.get(p) ?? 0);
    const lat = latency(results.map((r) => r.ms));
    const statuses: Record<string, number> = {};
    for (const r of results) if (r.status !== 202) statuses[r.status] = (statuses[r.status] ?? 0) + 1;
    if (Object.keys(statuses).length) console.log(`  not 202: ${JSON.stringify(statuses)}`);
    const n = results.length;
    console.log(`  user ${round((proc1.user - proc0.user) / n, 3)} sys ${round((proc1.sys - proc0.sys) / n, 3)} ms/POST; ${round(stats.queries / n, 2)} PG round trips, ${round(stats.redisWrites / n, 2)} Redis writes per POST`);
    return { cpu: stats.cpuMs / results.length, pg: pgMs / results.length, n: results.length, failed: results.filter((r) => r.status !== 202).length, p50: lat.p50, p99: lat.p99 };
  };
  for (const api of apis) await segment(api, Number(args.warmup));
  const rounds = Number(args.rounds);
  for (let r = 0; r < rounds; r++) {
    // --together: every checkout's segment at the same time (each its own in-flight POSTs), so each
    // round's readings share the machine's load exactly; otherwise one after the other, order alternating.
    const order = r % 2 ? [...apis].reverse() : apis;
    const report = (api: Api, s: Api['samples'][number]) => {
      api.samples.push(s);
      console.log(`round ${r} ${api.root}#${apis.indexOf(api)}: API ${round(s.cpu, 3)} ms/POST, PG ${round(s.pg, 3)} ms/POST, p50 ${round(s.p50, 2)} p99 ${round(s.p99, 2)} ms, ${s.failed}/${s.n} not 202`);
    };
    if (args.together) {
      const all = await Promise.all(order.map((api) => segment(api, Math.round(rate * seconds))));
      order.forEach((api, i) => report(api, all[i]!));
    } else for (const api of order) report(api, await segment(api, Math.round(rate * seconds)));
  }
  for (const api of apis) {
    const cpus = api.samples.map((s) => s.cpu).sort((a, b) => a - b);
    const mean = cpus.reduce((a, b) => a + b, 0) / cpus.length;
    const pgMean = api.samples.reduce((a, s) => a + s.pg, 0) / api.samples.length;
    if (api !== apis[0]) {
      const d = api.samples.map((s, i) => s.cpu / apis[0]!.samples[i]!.cpu).sort((a, b) => a - b);
      console.log(`#${apis.indexOf(api)} ÷ #0 per round: ${d.map((x) => round(x, 3)).join(' ')} (median ${round(d[Math.floor(d.length / 2)]!, 3)})`);
    }
    console.log(`${api.root}#${apis.indexOf(api)}: API CPU per POST mean ${round(mean, 3)} ms, median ${round(cpus[Math.floor(cpus.length / 2)]!, 3)}, range ${round(cpus[0]!, 3)}–${round(cpus.at(-1)!, 3)}; PG ${round(pgMean, 3)} ms/POST`);
  }
} finally {
  for (const api of apis) {
    api.client.close();
    await api.child.stop();
  }
  for (const p of prefixes) await deletePrefix(p).catch(() => 0);
  await dbs.dropAll();
}

async function closed<T>(inFlight: number, total: number, fire: () => Promise<T>): Promise<T[]> {
  const out: T[] = [];
  let sent = 0;
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (sent < total) {
        sent++;
        out.push(await fire());
      }
    }),
  );
  return out;
}

/** User and system CPU time (ms) of a process, from /proc/<pid>/stat. */
function procTimes(pid: number): { user: number; sys: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { user: Number(fields[11]) * 10, sys: Number(fields[12]) * 10 };
}

async function backends(database: string): Promise<number[]> {
  const c = new pg.Client({ connectionString: ADMIN_URL });
  await c.connect();
  try {
    const r = await c.query(`select pid from pg_stat_activity where datname = $1`, [database]);
    return r.rows.map((x: { pid: number }) => x.pid);
  } finally {
    await c.end();
  }
}
