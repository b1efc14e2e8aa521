import { randomUUID } from 'node:crypto';
import { appendFileSync } from 'node:fs';
import { parseConfig } from '../../../src/platform/config/config.ts';
import { signDevToken } from '../../../src/platform/tenancy/jwt.ts';
import { spawnChild, type Child } from '../lib/children.ts';
import { Completions, closedLoop, type LoopResult } from '../lib/closed-loop.ts';
import { ApiClient, GOLDEN_PATH_POST, NO_KEY_POST, openLoop } from '../lib/http-load.ts';
import { measure, type Measured } from '../lib/measure.ts';
import { watchMachine, type MachineWindow } from '../lib/pressure.ts';
import { CLASS_A_SUBMISSION, oursEnv, productionEnv, productionNodeFlags, spawnOursWorkers, stopAll, wireCompletions, type OursTarget } from '../lib/ours.ts';
import { latency, max, min, type Latency } from '../lib/stats.ts';
import type { LoopOpts } from './engine.ts';

/** Submissions come from this many tenants, round-robin (the per-tenant rate limit is 600 per minute). */
export const TENANTS = 50;

/**
 * POSTs at a fixed rate: latency of each, and the CPU every part of the stack used meanwhile (ms over
 * the window), so the figure can be read against how busy the machine was.
 */
export interface FixedRateResult {
  post: Latency;
  achievedRate: number;
  sent: number;
  failed: number;
  statuses: Record<string, number>;
  wallMs: number;
  cpuMs: { api: number; workers: number; postgres: number; redis: number; loadGenerator: number };
  /** CPU and I/O pressure and PostgreSQL's WAL flushes over the window (absent in older reports). */
  machine: MachineWindow;
}

/** Our whole stack: the API process (production app) and worker processes, driven over HTTP. */
export interface HttpTarget {
  api: Child;
  workers: Child[];
  client: ApiClient;
  /** Closed loop of golden-path submissions (POST with Idempotency-Key) to completion. */
  run(opts: LoopOpts): Promise<Measured<LoopResult>>;
  /** POST latency with and without the idempotency layer: `pairs` sequential pairs, alternating. */
  idempotencyPairs(pairs: number): Promise<{ withKey: Latency; withoutKey: Latency; deltaP50: number }>;
  /** Open loop: POSTs at `rate` per second for `seconds`, latency of each. */
  fixedRate(rate: number, seconds: number): Promise<FixedRateResult>;
  /** Stops the worker processes (the API keeps running). */
  stopWorkers(): Promise<void>;
  close(): Promise<void>;
}

export async function openHttp(target: OursTarget, workerCount: number): Promise<HttpTarget> {
  // Production limits stay as they are (600 submissions per tenant per minute): the load comes from
  // TENANTS tenants, as it would on a multi-tenant platform.
  const env = oursEnv(target);
  const api = spawnChild('test/bench/bench-api.ts', { name: `api-${target.prefix}`, env: { ...productionEnv('start:api'), ...env }, nodeArgs: productionNodeFlags('start:api') });
  const [info, workers] = await Promise.all([api.ready as Promise<{ port: number }>, spawnOursWorkers(target, workerCount)]);
  const client = new ApiClient(info.port);
  let completions = new Completions();
  wireCompletions(workers, (items) => completions.feed(items));
  let closed = false;
  const config = parseConfig(env);
  const tokens = await Promise.all(Array.from({ length: TENANTS }, () => signDevToken(config, { tenantId: randomUUID(), sub: 'bench-submitter', roles: [] })));
  let next = 0;
  const tokenOf = () => tokens[next++ % tokens.length]!;
  const submit = async () => (await client.post(GOLDEN_PATH_POST, tokenOf(), CLASS_A_SUBMISSION)).runId;
  return {
    api,
    workers,
    client,
    async run(opts) {
      const warmup = opts.warmup ?? 50;
      if (warmup > 0) await closedLoop({ total: warmup, inFlight: Math.min(warmup, opts.inFlight), start: submit, completions });
      const loop = { total: opts.total, inFlight: opts.inFlight, start: submit, completions, ...(opts.maxMs ? { maxMs: opts.maxMs } : {}) };
      return measure({ database: target.db.name, workers, others: [api], fn: () => closedLoop(loop) });
    },
    async idempotencyPairs(pairs) {
      const withKey: number[] = [];
      const withoutKey: number[] = [];
      for (let i = 0; i < 20; i++) await client.post(i % 2 ? NO_KEY_POST : GOLDEN_PATH_POST, tokenOf(), CLASS_A_SUBMISSION, i % 2 ? null : randomUUID());
      for (let i = 0; i < pairs; i++) {
        // Alternate which goes first, so neither variant always meets the warmer cache. Each pair comes
        // from the next tenant: the per-tenant rate limit applies to the benchmark too.
        const order = i % 2 ? [true, false] : [false, true];
        const pairToken = tokenOf();
        for (const keyed of order) {
          const r = await client.post(keyed ? GOLDEN_PATH_POST : NO_KEY_POST, pairToken, CLASS_A_SUBMISSION, keyed ? randomUUID() : null);
          (keyed ? withKey : withoutKey).push(r.ms);
        }
      }
      const a = latency(withKey);
      const b = latency(withoutKey);
      return { withKey: a, withoutKey: b, deltaP50: a.p50 - b.p50 };
    },
    async fixedRate(rate, seconds) {
      const fire = () => client.post(GOLDEN_PATH_POST, tokenOf(), CLASS_A_SUBMISSION, randomUUID(), { allowErrors: true });
      const live = workers.filter((w) => w.alive());
      const { result: m, machine } = await watchMachine(() =>
        measure({ database: target.db.name, workers: live, others: [api], accounting: false, fn: () => openLoop({ rate, seconds, fire }) }),
      );
      const results = m.result;
      // Diagnosis: where the slow requests lie in time, to set against server logs and samplers (bench.ts).
      if (process.env.BENCH_POST_TIMELINE) {
        const lines = results.map((r) => `${Math.round(r.sentAt)}\t${r.ms.toFixed(1)}\t${r.status}`);
        appendFileSync(process.env.BENCH_POST_TIMELINE, `# window ${live.length} workers\n${lines.join('\n')}\n`);
      }
      const first = min(results.map((r) => r.sentAt));
      const last = max(results.map((r) => r.sentAt));
      const statuses: Record<string, number> = {};
      for (const r of results) statuses[r.status] = (statuses[r.status] ?? 0) + 1;
      // Every request counts, failed ones too (a 503 after a 5 s pool wait is a slow answer, not a missing one).
      return {
        post: latency(results.map((r) => r.ms)),
        achievedRate: (results.length - 1) / ((last - first) / 1000),
        sent: results.length,
        failed: results.filter((r) => r.status !== 202).length,
        statuses,
        wallMs: m.wallMs,
        cpuMs: { api: m.otherCpuMs, workers: m.workerCpuMs, postgres: m.pgCpuMs, redis: m.redisCpuMs, loadGenerator: m.localCpuMs },
        machine,
      };
    },
    async stopWorkers() {
      await stopAll(workers);
    },
    async close() {
      if (closed) return;
      closed = true;
      completions = new Completions();
      client.close();
      await Promise.all([api.stop(), stopAll(workers)]);
    },
  };
}
