import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { freePort } from '../helpers/own-infra.ts';
import { waitFor } from '../helpers/poll.ts';
import { matrixFor } from './readiness.fixtures.ts';

/**
 * Redis rows of the readiness matrix against a redis-server of this file's own on a free port: its
 * eviction policy, persistence and idle timeout are changed with CONFIG SET there, never on the shared Redis.
 */
let own: { url: string; client: Redis; proc: ChildProcess; dir: string };

beforeAll(async () => {
  // Its own working directory: turning AOF on writes files there, never into the repository.
  const dir = await mkdtemp(join(tmpdir(), 'dealix-rdy-redis-'));
  const port = await freePort();
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  const url = `redis://127.0.0.1:${port}`;
  const client = new Redis(url, { maxRetriesPerRequest: 1, lazyConnect: true, retryStrategy: () => 100 });
  client.on('error', () => {});
  own = { url, client, proc, dir };
  await waitFor(async () => (await client.ping().catch(() => '')) === 'PONG', { timeoutMs: 15_000, what: 'own redis-server' });
});
afterAll(async () => {
  if (!own) return;
  own.client.disconnect();
  if (own.proc.exitCode === null) {
    const exited = new Promise((r) => own.proc.once('exit', r));
    own.proc.kill('SIGKILL');
    await exited;
  }
  await rm(own.dir, { recursive: true, force: true });
});

describe('Redis', () => {
  it('an eviction policy other than noeviction fails redis-eviction', async () => {
    await own.client.config('SET', 'maxmemory-policy', 'allkeys-lru');
    try {
      const m = await matrixFor({ env: { REDIS_URL: own.url } });
      expect(m.row('redis').status).toBe('PASS');
      expect(m.row('redis-eviction')).toMatchObject({ status: 'FAIL', reason: 'maxmemory-policy is allkeys-lru; BullMQ requires noeviction' });
    } finally {
      await own.client.config('SET', 'maxmemory-policy', 'noeviction');
    }
  });

  it('in production, a Redis without persistence fails redis-persistence; AOF on passes', async () => {
    const production = (d: { config: object }) => ({ config: { ...d.config, NODE_ENV: 'production' } as never });
    const bare = await matrixFor({ env: { REDIS_URL: own.url }, adjust: production });
    expect(bare.row('redis-persistence').status).toBe('FAIL');
    expect(bare.row('redis-persistence').reason).toMatch(/appendonly no, save ""/);
    const dev = await matrixFor({ env: { REDIS_URL: own.url } });
    expect(dev.row('redis-persistence')).toMatchObject({ status: 'N/A', reason: 'not required outside production (appendonly no, save "": a restart loses queued jobs)' });
    await own.client.config('SET', 'appendonly', 'yes');
    try {
      const aof = await matrixFor({ env: { REDIS_URL: own.url }, adjust: production });
      expect(aof.row('redis-persistence')).toMatchObject({ status: 'PASS', reason: 'appendonly yes, save ""' });
    } finally {
      await own.client.config('SET', 'appendonly', 'no');
    }
  });

  it('a timeout other than 0 fails redis-timeout with the reason; 0 passes', async () => {
    expect((await matrixFor({ env: { REDIS_URL: own.url } })).row('redis-timeout')).toMatchObject({ status: 'PASS', reason: 'timeout 0: idle clients are never closed' });
    await own.client.config('SET', 'timeout', '300');
    try {
      const m = await matrixFor({ env: { REDIS_URL: own.url } });
      expect(m.row('redis-timeout')).toMatchObject({ status: 'FAIL', reason: expect.stringMatching(/^timeout is 300 s: a worker whose event loop is blocked that long .* looks gone, and its lapsed lock counts as a crash of its step \(ADR 0016\); set timeout 0$/) });
      expect(m.report.ok).toBe(false);
    } finally {
      await own.client.config('SET', 'timeout', '0');
    }
  });

  it('a Redis that refuses CONFIG (managed Redis): redis-timeout fails as unknown, the rows INFO answers are read from it', async () => {
    // An ACL user that may do everything but CONFIG, as several managed Redis services give.
    await own.client.call('ACL', 'SETUSER', 'noconfig', 'on', '>noconfig-secret', '~*', '&*', '+@all', '-config');
    try {
      const url = own.url.replace('redis://', 'redis://noconfig:noconfig-secret@');
      const m = await matrixFor({ env: { REDIS_URL: url } });
      expect(m.row('redis').status).toBe('PASS');
      expect(m.row('redis-eviction')).toMatchObject({ status: 'PASS', reason: 'maxmemory-policy noeviction' });
      expect(m.row('redis-timeout')).toMatchObject({ status: 'FAIL', reason: expect.stringMatching(/^timeout unknown \(CONFIG GET refused\): it must be 0, or a worker whose event loop is blocked/) });
      expect(m.report.ok).toBe(false);
    } finally {
      await own.client.call('ACL', 'DELUSER', 'noconfig');
    }
  });

  it('an unreachable Redis fails the redis rows with the reason', async () => {
    const m = await matrixFor({ env: { REDIS_URL: `redis://127.0.0.1:${await freePort()}` } });
    expect(m.row('redis').status).toBe('FAIL');
    expect(m.row('redis').reason).toMatch(/unreachable/);
    expect(m.row('redis-eviction').status).toBe('FAIL');
    expect(m.row('redis-timeout').reason).toMatch(/unreachable/);
  });
});
