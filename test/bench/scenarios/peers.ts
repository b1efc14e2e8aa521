import { randomUUID } from 'node:crypto';
import { FlowProducer, type FlowJob } from 'bullmq';
import { Redis } from 'ioredis';
import { REDIS_URL, adminQuery, type BenchDb } from '../lib/bench-db.ts';
import { spawnChild, type Child } from '../lib/children.ts';
import { Completions, closedLoop, type LoopResult } from '../lib/closed-loop.ts';
import { measure, type Measured } from '../lib/measure.ts';
import { installIoCounter } from '../lib/io-counter.ts';
import { CLASS_A_SUBMISSION } from '../lib/ours.ts';
import type { LoopOpts } from './engine.ts';

export type PeerRunOpts = LoopOpts & { warmup: number };

/** DBOS Transact in one child process (see peers/dbos-peer.ts). */
export async function openDbos(db: BenchDb) {
  // DBOS keeps its runs in its own system tables, not durable_runs, so the pack insert's check that the
  // pack names a run of its tenant (evidence-pack.entity.ts) would refuse every pack of the peer: in the
  // peer's own database the trigger seals only (the same writes as ours; one index read fewer).
  await adminQuery(
    `create or replace function evidence_packs_seal_fn() returns trigger as $$ begin insert into evidence_seals (id, tenant_id, run_id, sha256, created_at) values (new.id, new.tenant_id, new.run_id, new.sha256, new.created_at); return null; end; $$ language plpgsql`,
    [],
    db.name,
  );
  // Nor does it write our checkpoints, which a pack and an approval request commit only with (written_by_its_step,
  // committedWithItsStep in durable-checkpoint.entity.ts): the peer's database drops those triggers (ours pays
  // their deferred check, one read of the run's checkpoints per pack and per request; the peer does not).
  for (const table of ['evidence_packs', 'approval_requests']) await adminQuery(`drop trigger if exists written_by_its_step on ${table}`, [], db.name);
  const child = spawnChild('test/bench/peers/dbos-peer.ts', {
    name: 'dbos',
    env: { BENCH_APP_URL: db.appUrl, BENCH_DBOS_SYSTEM_URL: db.adminUrl, LOG_LEVEL: 'info' },
  });
  await child.ready;
  let pending: { resolve(r: LoopResult): void; reject(e: Error): void } | undefined;
  child.onResult((r) => {
    const p = pending;
    pending = undefined;
    const res = r as { ok: boolean; result?: LoopResult; error?: string };
    if (res.ok) p?.resolve(res.result!);
    else p?.reject(new Error(`dbos: ${res.error}`));
  });
  const remote = (params: object) =>
    new Promise<LoopResult>((resolve, reject) => {
      pending = { resolve, reject };
      child.send({ type: 'run', params });
    });
  return {
    child,
    async run(opts: PeerRunOpts): Promise<Measured<LoopResult>> {
      const tenants = opts.tenants ?? [randomUUID()];
      const params = (total: number, maxMs?: number) => ({ total, inFlight: Math.min(opts.inFlight, total), tenants, submission: CLASS_A_SUBMISSION, maxMs });
      if (opts.warmup > 0) await remote(params(opts.warmup));
      return measure({ database: db.name, workers: [child], fn: () => remote(params(opts.total, opts.maxMs)) });
    },
    close: () => child.stop(),
  };
}

const RAW_QUEUE = 'raw-flow';
const RAW_STEPS = 4;

/** Raw BullMQ: the benchmark process adds four-step flows, one worker process runs no-op jobs. */
export async function openRawBullmq(prefix: string, concurrency: number) {
  const child: Child = spawnChild('test/bench/peers/bullmq-worker.ts', {
    name: 'bullmq',
    env: { BENCH_REDIS_URL: REDIS_URL, BENCH_PREFIX: prefix, BENCH_RAW_QUEUE: RAW_QUEUE, BENCH_RAW_LAST_STEP: `step-${RAW_STEPS}`, BENCH_CONCURRENCY: String(concurrency) },
  });
  await child.ready;
  const connection = new Redis(REDIS_URL, { maxRetriesPerRequest: null });
  const producer = new FlowProducer({ connection, prefix });
  const completions = new Completions();
  child.onDone(completions.feed);
  let closed = false;
  const start = async () => {
    const flowId = randomUUID();
    let node: FlowJob | undefined;
    for (let seq = 1; seq <= RAW_STEPS; seq++) {
      node = {
        name: `step-${seq}`,
        queueName: RAW_QUEUE,
        data: { flow_id: flowId, seq },
        opts: { jobId: `raw-${flowId}-${seq}`, removeOnComplete: { age: 3600 }, removeOnFail: { age: 7 * 24 * 3600 } },
        ...(node ? { children: [{ ...node, opts: { ...node.opts, failParentOnFailure: true } }] } : {}),
      };
    }
    await producer.add(node!);
    return flowId;
  };
  return {
    child,
    async run(opts: PeerRunOpts): Promise<Measured<LoopResult>> {
      if (opts.warmup > 0) await closedLoop({ total: opts.warmup, inFlight: Math.min(opts.inFlight, opts.warmup), start, completions });
      // No database: `measure` still needs one to read; no transactions to count (the table prints 0),
      // so no waiting for PostgreSQL's statistics to settle either.
      const loop = { total: opts.total, inFlight: opts.inFlight, start, completions, ...(opts.maxMs ? { maxMs: opts.maxMs } : {}) };
      return measure({ database: 'postgres', workers: [child], local: installIoCounter(), fn: () => closedLoop(loop), accounting: false });
    },
    async close() {
      if (closed) return;
      closed = true;
      await child.stop();
      await producer.close();
      connection.disconnect();
    },
  };
}
