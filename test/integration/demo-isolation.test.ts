import { afterAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { networkInterfaces } from 'node:os';
import net from 'node:net';
import { Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { TEST_JWT_SECRET, TEST_REDIS_URL } from '../helpers/env.ts';
import { createTestDatabase } from '../helpers/db.ts';
import { spawnApi } from '../helpers/api-process.ts';
import { DEMO_API_HOST, demoChildEnvironment } from '../../src/demo/demo.ts';
import { waitFor } from '../helpers/poll.ts';
import { checkNoWorkers, DEMO_QUEUES } from '../../src/demo/demo-setup.ts';
import { DemoError } from '../../src/demo/demo-support.ts';
import { createRedis } from '../../src/platform/queue/connections.ts';
import type { AddressInfo } from 'node:net';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { DemoProcesses } from '../../src/demo/demo-processes.ts';
import { parseConfig } from '../../src/platform/config/config.ts';
import { startMetricsServer } from '../../src/platform/telemetry/metrics-server.ts';
import { jsonLines, TELEMETRY_REGISTER } from '../helpers/api-process.ts';

/**
 * `npm run demo` starts its own API and worker with .env's QUEUE_PREFIX (and, for its webhook receiver
 * on 127.0.0.1, the SSRF guard off). A worker already serving that prefix — the README's
 * `npm run start:worker` left running — takes the demo's jobs (refusing its receiver; the demo timed
 * out waiting for a webhook, a misleading message) and the demo's worker takes that worker's tenants'
 * webhooks with the guard off. The demo's preflight asks BullMQ for the workers on its queues and stops at once.
 * Its children serve every workflow queue whatever .env's WORKER_QUEUES says, and its API, whose guard
 * is off, listens on 127.0.0.1 only (API_HOST), --keep-running included, and so does its worker's
 * metrics port (WORKER_METRICS_HOST; unset, a worker's, like the API, listens on every interface).
 */
const prefixes: string[] = [];
const newPrefix = () => {
  const p = `tpre${randomBytes(4).toString('hex')}`;
  prefixes.push(p);
  return p;
};
afterAll(async () => {
  const redis = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
  for (const p of prefixes) {
    const keys = await redis.keys(`${p}:*`);
    if (keys.length) await redis.del(...keys);
  }
  redis.disconnect();
});

/** A real BullMQ worker on `queue` under `prefix`, on a connection made as a platform worker's is (it takes nothing: no job is added). */
async function workerOn(prefix: string, queue: string): Promise<{ close(): Promise<void> }> {
  const connection = createRedis(TEST_REDIS_URL, 'worker', 'dealix-worker');
  const worker = new Worker(queue, async () => undefined, { connection, prefix, autorun: true });
  worker.on('error', () => {});
  const probe = new Queue(queue, { connection: { url: TEST_REDIS_URL }, prefix });
  try {
    await waitFor(async () => (await probe.getWorkersCount()) > 0, { timeoutMs: 30_000, what: `the worker on ${prefix}:${queue} to be listed` });
  } finally {
    await probe.close();
  }
  return {
    async close() {
      await worker.close();
      connection.disconnect();
    },
  };
}

describe("the demo's preflight", () => {
  it.each(DEMO_QUEUES)('refuses to start while a worker serves the %s queue under its prefix, naming the fix', async (queue) => {
    const prefix = newPrefix();
    const worker = await workerOn(prefix, queue);
    try {
      const refusal = await checkNoWorkers(TEST_REDIS_URL, prefix).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(refusal).toBeInstanceOf(DemoError);
      const message = (refusal as Error).message;
      expect(message).toContain(`a worker already serves QUEUE_PREFIX "${prefix}"`);
      expect(message).toContain(`1 on ${queue}`);
      expect(message).toContain('Stop that worker');
      expect(message).toContain(`QUEUE_PREFIX=${prefix}_demo`);
    } finally {
      await worker.close();
    }
    // Once it is gone (its connections closed), the demo may start.
    await waitFor(
      () =>
        checkNoWorkers(TEST_REDIS_URL, prefix).then(
          () => true,
          () => false,
        ),
      { timeoutMs: 30_000, what: 'the preflight to pass once the worker stopped' },
    );
  });

  it("lets the demo start when the only workers serve another prefix", async () => {
    const worker = await workerOn(newPrefix(), DEMO_QUEUES[0]);
    try {
      await expect(checkNoWorkers(TEST_REDIS_URL, newPrefix())).resolves.toBeUndefined();
    } finally {
      await worker.close();
    }
  });
});

/** The environment of an API or worker on `db` and a prefix of this file's. */
const processEnv = (db: { appUrl: string; ownerUrl: string }): Record<string, string> => ({
  NODE_ENV: 'development',
  DATABASE_URL: db.appUrl,
  MIGRATION_DATABASE_URL: db.ownerUrl,
  REDIS_URL: TEST_REDIS_URL,
  QUEUE_PREFIX: newPrefix(),
  JWT_SECRET: TEST_JWT_SECRET,
  OTEL_SDK_DISABLED: 'true',
});

/** This machine's first external IPv4 address, when it has one. */
const otherAddress = () =>
  Object.values(networkInterfaces())
    .flat()
    .find((a) => a && a.family === 'IPv4' && !a.internal)?.address;

/** How a TCP connection to `host:port` ends: 'connected', or the error's code. */
const connectTo = (host: string, port: number) =>
  new Promise<string>((resolve) => {
    const s = net.connect(port, host);
    s.once('connect', () => {
      s.destroy();
      resolve('connected');
    });
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
  });

describe("the demo's children", () => {
  it('serve every workflow queue (.env\'s WORKER_QUEUES dropped), with the guard off, the API and the worker metrics on 127.0.0.1 only', () => {
    const env = demoChildEnvironment({ QUEUE_PREFIX: 'p', WORKER_QUEUES: 'partner-offboarding', WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'false', PORT: '3000', WORKER_METRICS_HOST: '0.0.0.0' }, 4321);
    expect(env).toEqual({ QUEUE_PREFIX: 'p', PORT: '4321', API_HOST: '127.0.0.1', WORKER_METRICS_HOST: '127.0.0.1', WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true' });
    expect(DEMO_API_HOST).toBe('127.0.0.1');
  });

  it("the demo's worker, started by its process helpers, serves its metrics on 127.0.0.1 only", { timeout: 150_000 }, async () => {
    const db = await createTestDatabase();
    const procs = new DemoProcesses();
    try {
      const env = demoChildEnvironment(
        { PATH: process.env.PATH ?? '', ...processEnv(db), LOG_LEVEL: 'info', WORKER_METRICS_PORT: '0' },
        0,
      );
      // As the demo starts its worker (demo.ts startChildren).
      const worker = procs.start('worker', ['--import', TELEMETRY_REGISTER, 'workers/golden-path.worker.ts'], env);
      const listening = await waitFor(
        () => {
          // An assertion ends the wait at once: a worker that exited says why.
          expect(worker.alive, worker.tail(40).join('\n')).toBe(true);
          return jsonLines(worker.tail(400).join('\n')).find((l) => l.msg === 'worker metrics listening');
        },
        { timeoutMs: 120_000, what: "the demo's worker to open its metrics port" },
      );
      expect(listening).toMatchObject({ metrics_address: '127.0.0.1' });
      const port = Number(listening.metrics_port);
      expect((await fetch(`http://127.0.0.1:${port}/metrics`)).status).toBe(200);
      const other = otherAddress();
      if (other) expect(await connectTo(other, port), `connecting to ${other}:${port}`).toBe('ECONNREFUSED');
    } finally {
      await procs.stopAll(30_000);
      await db.drop();
    }
  });
});

describe('WORKER_METRICS_HOST', () => {
  const registry = new Registry();
  const logger = pino({ level: 'silent' });
  const base = { JWT_SECRET: TEST_JWT_SECRET, WORKER_METRICS_PORT: '0' };
  const listenOn = async (env: Record<string, string>) => {
    const cfg = parseConfig(env);
    // As worker-runtime.ts starts it.
    const server = await startMetricsServer(registry, cfg.WORKER_METRICS_PORT!, logger, cfg.WORKER_METRICS_HOST);
    const address = server.address() as AddressInfo;
    await new Promise((r) => server.close(r));
    return address.address;
  };

  it("with the demo's children's environment, the metrics server listens on 127.0.0.1 only", async () => {
    expect(await listenOn(demoChildEnvironment(base, 0))).toBe('127.0.0.1');
  });

  it('unset (the default), on every interface, as API_HOST: a Prometheus on another machine or pod scrapes each worker', async () => {
    expect(parseConfig(base).WORKER_METRICS_HOST).toBeUndefined();
    expect(['::', '0.0.0.0']).toContain(await listenOn(base));
  });

  it('set, on that address', async () => {
    expect(await listenOn({ ...base, WORKER_METRICS_HOST: '127.0.0.1' })).toBe('127.0.0.1');
  });
});

describe('API_HOST', () => {
  it('the API listens on that address only', { timeout: 120_000 }, async () => {
    const db = await createTestDatabase();
    const api = await spawnApi({ ...processEnv(db), API_HOST: '127.0.0.1' }).catch(async (e: unknown) => {
      await db.drop();
      throw e;
    });
    try {
      expect(api.lines().find((l) => l.msg === 'api listening')).toMatchObject({ address: '127.0.0.1' });
      const port = Number(new URL(api.baseUrl).port);
      expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
      // This machine's other addresses (when it has one) are refused.
      const other = otherAddress();
      if (other) expect(await connectTo(other, port), `connecting to ${other}:${port}`).toBe('ECONNREFUSED');
    } finally {
      await api.stop();
      await db.drop();
    }
  });
});
