/**
 * Raw BullMQ peer, worker side: no-op jobs, no database. The benchmark adds the four-step sequential
 * flows of the design's reference figures (facts.md): four jobs, nested single children, first
 * step deepest (scenarios/peers.ts). Not our runtime's shape: since ADR 0005 ours adds one job per run
 * segment and runs its steps in that job, with no queue hop between them. This worker reports a flow
 * done when its last step's processor has run, the same moment ours reports a run done.
 */
import { Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { childChannel } from '../lib/child-ipc.ts';
import { ioStats } from '../lib/io-stats.ts';
import { installIoCounter } from '../lib/io-counter.ts';
import { nowMs } from '../lib/stats.ts';

const counter = installIoCounter();
const env = process.env;
const RAW_LAST_STEP = env.BENCH_RAW_LAST_STEP ?? 'step-4';
const connection = new Redis(env.BENCH_REDIS_URL!, { maxRetriesPerRequest: null });
// No database here: its query counts read 0, as the peers' that have one read theirs.
const channel = childChannel(ioStats(counter));

const worker = new Worker(
  env.BENCH_RAW_QUEUE!,
  async (job) => {
    if (job.name === RAW_LAST_STEP) channel.done((job.data as { flow_id: string }).flow_id, nowMs());
    return { ok: true };
  },
  { connection, prefix: env.BENCH_PREFIX!, concurrency: Number(env.BENCH_CONCURRENCY ?? 16) },
);
worker.on('error', () => {});
await worker.waitUntilReady();
process.once('SIGTERM', () => {
  void worker.close().finally(() => {
    connection.disconnect();
    process.exit(0);
  });
});
channel.ready({ pid: process.pid });
