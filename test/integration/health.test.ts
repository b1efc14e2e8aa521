import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { Redis } from 'ioredis';
import { api, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';

/** A redis-server of this test alone (never the shared one): it is stopped and started again here. */
class OwnRedis {
  readonly port: number;
  private proc: ChildProcess | undefined;
  constructor(port: number) {
    this.port = port;
  }
  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }
  async start(): Promise<void> {
    this.proc = spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
    const probe = new Redis(this.url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    probe.on('error', () => {});
    try {
      await waitFor(async () => (await probe.connect().then(() => probe.ping()).catch(() => '')) === 'PONG', { timeoutMs: 15_000, what: 'own redis-server' });
    } finally {
      probe.disconnect();
    }
  }
  async stop(): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGKILL');
    await exited;
  }
}

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });

let redis: OwnRedis;
let stack: TestStack;

beforeAll(async () => {
  redis = new OwnRedis(await freePort());
  await redis.start();
  stack = await startStack({ env: { REDIS_URL: redis.url } });
});
afterAll(async () => {
  await stack?.stop();
  await redis?.stop();
});

describe('health and readiness', () => {
  it('is live and ready when PostgreSQL, Redis and the migrations are in order', async () => {
    expect((await api(stack, 'GET', '/healthz')).json).toEqual({ status: 'ok' });
    const ready = await api(stack, 'GET', '/readyz');
    expect(ready.status).toBe(200);
    expect(ready.json).toEqual({ status: 'ready', checks: { postgres: { ok: true }, redis: { ok: true }, migrations: { ok: true } } });
  });

  it('answers 503 naming Redis while Redis is stopped, stays live, and is ready again once Redis is back', async () => {
    await redis.stop();
    const down = await waitFor(async () => {
      const r = await api(stack, 'GET', '/readyz');
      return r.status === 503 ? r : undefined;
    }, { timeoutMs: 30_000, what: 'readiness to fail' });
    expect(down.headers.get('content-type')).toContain('application/problem+json');
    expect(down.json).toMatchObject({ status: 503, code: 'not_ready', checks: { redis: { ok: false }, postgres: { ok: true } } });
    expect(down.json.detail).toBe('Not ready: redis (unreachable or too slow)');
    // Public: the driver's message (host, port, address) stays in the log.
    expect(down.text).not.toMatch(/127\.0\.0\.1|ECONNREFUSED|:\d{4,5}\b/);
    expect(down.headers.get('x-correlation-id')).toBeTruthy();
    expect((await api(stack, 'GET', '/healthz')).status).toBe(200);

    await redis.start();
    await waitFor(async () => (await api(stack, 'GET', '/readyz')).status === 200, { timeoutMs: 30_000, what: 'readiness to recover' });
  });
});
