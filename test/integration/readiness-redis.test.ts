import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { ConfigError, parseConfig } from '../../src/platform/config/config.ts';
import { assessReadiness } from '../../src/readiness/readiness.target.ts';
import { redisRows } from '../../src/readiness/redis.checks.ts';
import { createTestDatabase } from '../helpers/db.ts';
import { freePort } from '../helpers/own-infra.ts';
import { waitFor } from '../helpers/poll.ts';
import { dropKeys, envFor, matrixFor, matrixOf } from './readiness.fixtures.ts';

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

  it('an unreachable Redis fails the redis rows with the reason, listed in READINESS_ACCEPT_UNKNOWN or not', async () => {
    const m = await matrixFor({ env: { REDIS_URL: `redis://127.0.0.1:${await freePort()}`, READINESS_ACCEPT_UNKNOWN: 'redis-eviction,redis-timeout', READINESS_ACCEPT_NOTE: 'checked by ops' } });
    expect(m.row('redis').status).toBe('FAIL');
    expect(m.row('redis').reason).toMatch(/unreachable/);
    expect(m.row('redis-eviction').status).toBe('FAIL');
    expect(m.row('redis-timeout')).toMatchObject({ status: 'FAIL', reason: expect.stringMatching(/unreachable/) });
    expect(m.report.ok).toBe(false);
  });
});

/**
 * READINESS_ACCEPT_UNKNOWN: rows a managed Redis keeps the matrix from reading (CONFIG refused), verified
 * by the operator where the setting lives (its parameter group). Only an unknown value is accepted.
 */
describe('values the matrix cannot read, accepted by the operator', () => {
  const NOTE = 'ElastiCache parameter group dealix-prod: timeout 0, noeviction, AOF on (ops, 2026-12-01)';

  /** A URL on the own redis-server as an ACL user denied `denied` (CONFIG, and INFO too for some managed Redis). */
  async function restrictedUser<T>(denied: string[], fn: (url: string) => Promise<T>): Promise<T> {
    await own.client.call('ACL', 'SETUSER', 'restricted', 'reset', 'on', '>restricted-secret', '~*', '&*', '+@all', ...denied.map((c) => `-${c}`));
    try {
      return await fn(own.url.replace('redis://', 'redis://restricted:restricted-secret@'));
    } finally {
      await own.client.call('ACL', 'DELUSER', 'restricted');
    }
  }

  it('CONFIG refused: NOT READY without acceptance; READY with redis-timeout accepted, the row ACCEPTED with the note, not a PASS', async () => {
    await restrictedUser(['config'], async (url) => {
      const refused = await matrixFor({ env: { REDIS_URL: url } });
      expect(refused.failing()).toEqual([expect.stringMatching(/^redis-timeout: timeout unknown \(CONFIG GET refused\).*list it in READINESS_ACCEPT_UNKNOWN/)]);
      expect(refused.report.ok).toBe(false);
      const accepted = await matrixFor({ env: { REDIS_URL: url, READINESS_ACCEPT_UNKNOWN: 'redis-timeout', READINESS_ACCEPT_NOTE: NOTE } });
      expect(accepted.failing()).toEqual([]);
      expect(accepted.report.ok).toBe(true);
      expect(accepted.row('redis-timeout')).toEqual({ component: 'redis-timeout', status: 'ACCEPTED', reason: `verified by the operator: ${NOTE} (READINESS_ACCEPT_UNKNOWN; unread here: timeout unknown (CONFIG GET refused))` });
      // Without a note there is no acceptance: a configuration error (the config row fails; processes refuse to start).
      const bare = matrixOf(await assessReadiness(() => parseConfig({ JWT_SECRET: 'x'.repeat(32), READINESS_ACCEPT_UNKNOWN: 'redis-timeout' })));
      expect(bare.row('config')).toMatchObject({ status: 'FAIL', reason: expect.stringContaining('READINESS_ACCEPT_NOTE: required when READINESS_ACCEPT_UNKNOWN lists rows') });
      expect(bare.report.ok).toBe(false);
    });
  });

  it('in production, persistence unknown (AOF off in INFO, save rules unreadable) fails unless accepted; INFO refused too leaves the eviction policy unknown, accepted the same way', async () => {
    const production = (d: { config: object }) => ({ config: { ...d.config, NODE_ENV: 'production' } as never });
    await restrictedUser(['config'], async (url) => {
      const refused = await matrixFor({ env: { REDIS_URL: url }, adjust: production });
      expect(refused.row('redis-persistence')).toMatchObject({ status: 'FAIL', reason: expect.stringMatching(/^persistence unknown \(appendonly no, save rules unknown: CONFIG GET refused\)/) });
      const accepted = await matrixFor({ env: { REDIS_URL: url, READINESS_ACCEPT_UNKNOWN: 'redis-persistence, redis-timeout', READINESS_ACCEPT_NOTE: NOTE }, adjust: production });
      expect(accepted.row('redis-persistence')).toMatchObject({ status: 'ACCEPTED', reason: expect.stringMatching(/^verified by the operator: ElastiCache parameter group/) });
      expect(accepted.row('redis-timeout').status).toBe('ACCEPTED');
    });
    await restrictedUser(['config', 'info'], async (url) => {
      const refused = await matrixFor({ env: { REDIS_URL: url } });
      expect(refused.row('redis').status).toBe('PASS');
      expect(refused.row('redis-eviction')).toMatchObject({ status: 'FAIL', reason: expect.stringMatching(/^maxmemory-policy unknown \(INFO and CONFIG GET refused\): BullMQ requires noeviction/) });
      const accepted = await matrixFor({ env: { REDIS_URL: url, READINESS_ACCEPT_UNKNOWN: 'redis-eviction,redis-timeout', READINESS_ACCEPT_NOTE: NOTE } });
      expect(accepted.row('redis-eviction').status).toBe('ACCEPTED');
      expect(accepted.failing()).toEqual([]);
      expect(accepted.report.ok).toBe(true);
    });
  });

  it('a known bad value stays FAIL when its row is listed, and says the listing does not cover it', async () => {
    const listed = { READINESS_ACCEPT_UNKNOWN: 'redis-eviction,redis-timeout', READINESS_ACCEPT_NOTE: NOTE };
    await own.client.config('SET', 'timeout', '300');
    await own.client.config('SET', 'maxmemory-policy', 'allkeys-lru');
    try {
      const m = await matrixFor({ env: { REDIS_URL: own.url, ...listed } });
      expect(m.row('redis-timeout')).toMatchObject({ status: 'FAIL', reason: expect.stringMatching(/^timeout is 300 s: .*; READINESS_ACCEPT_UNKNOWN lists it, but accepts only a value the matrix cannot read$/) });
      expect(m.row('redis-eviction')).toMatchObject({ status: 'FAIL', reason: expect.stringMatching(/^maxmemory-policy is allkeys-lru; BullMQ requires noeviction; READINESS_ACCEPT_UNKNOWN lists it/) });
      expect(m.report.ok).toBe(false);
    } finally {
      await own.client.config('SET', 'timeout', '0');
      await own.client.config('SET', 'maxmemory-policy', 'noeviction');
    }
    // Values it reads and finds right pass as before: the listing changes nothing there.
    expect((await matrixFor({ env: { REDIS_URL: own.url, ...listed } })).row('redis-timeout')).toMatchObject({ status: 'PASS', reason: 'timeout 0: idle clients are never closed' });
  });

  it('an id that names no row, or a row that cannot be unknown, is a configuration error: the matrix fails its config row', async () => {
    for (const id of ['redis-timout', 'redis', 'jwt-keys']) {
      expect(() => parseConfig({ JWT_SECRET: 'x'.repeat(32), READINESS_ACCEPT_UNKNOWN: `redis-eviction,${id}` }), id).toThrow(ConfigError);
      const m = matrixOf(await assessReadiness(() => parseConfig({ JWT_SECRET: 'x'.repeat(32), READINESS_ACCEPT_UNKNOWN: id })));
      expect(m.row('config')).toMatchObject({ status: 'FAIL', reason: expect.stringContaining(`READINESS_ACCEPT_UNKNOWN.0: "${id}" is no readiness row whose value can be unknown (redis-eviction, redis-persistence, redis-timeout)`) });
      expect(m.report.ok).toBe(false);
    }
  });

  it('a connection lost after PING is no refused CONFIG: the listed rows fail as unreachable, never ACCEPTED', async () => {
    // The server closes the connection right after it answers PING (a restart, a failover): INFO and
    // CONFIG GET then fail on a closed connection, which is no answer from Redis and accepts nothing.
    const client = new Redis(own.url, { lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 0, retryStrategy: () => null });
    client.on('error', () => {});
    await client.connect();
    const id = String(await client.client('ID'));
    const ping = client.ping.bind(client) as () => Promise<string>;
    client.ping = (async () => {
      const pong = await ping();
      await own.client.client('KILL', 'ID', id);
      await waitFor(() => client.status === 'end', { what: 'the killed connection to close' });
      return pong;
    }) as never;
    try {
      const rows = await redisRows(client, { production: true, acceptance: { rows: ['redis-eviction', 'redis-persistence', 'redis-timeout'], note: NOTE } });
      expect(rows.map((r) => [r.component, r.status])).toEqual([
        ['redis', 'FAIL'],
        ['redis-eviction', 'FAIL'],
        ['redis-persistence', 'FAIL'],
        ['redis-timeout', 'FAIL'],
      ]);
      expect(rows[0]!.reason).toMatch(/^Redis unreachable: /);
      expect(rows[3]!.reason).toMatch(/^Redis unreachable: .*; READINESS_ACCEPT_UNKNOWN lists it, but accepts only a value the matrix cannot read$/);
    } finally {
      client.disconnect();
    }
  });

  it('npm run readiness: exit 0 with the row ACCEPTED in the table and in --json', async () => {
    const root = fileURLToPath(new URL('../..', import.meta.url));
    const db = await createTestDatabase();
    const out = join(own.dir, 'readiness.json');
    try {
      await restrictedUser(['config'], async (url) => {
        const env: Record<string, string> = { PATH: process.env.PATH ?? '', ...envFor(db, { REDIS_URL: url, READINESS_ACCEPT_UNKNOWN: 'redis-timeout', READINESS_ACCEPT_NOTE: NOTE }) };
        try {
          const text = await promisify(execFile)(process.execPath, ['src/cli/readiness.ts', '--out', out], { cwd: root, env, timeout: 90_000 });
          expect(text.stdout).toMatch(/ACCEPTED\s+redis-timeout\s+verified by the operator: ElastiCache/);
          expect(text.stdout).toMatch(/READY: \d+ of \d+ components PASS \(1 ACCEPTED: unknown to the matrix, verified by the operator/);
          const report = JSON.parse(await readFile(out, 'utf8'));
          expect(report.ok).toBe(true);
          expect(report.rows.find((r: { component: string }) => r.component === 'redis-timeout')).toMatchObject({ status: 'ACCEPTED', reason: expect.stringContaining(NOTE) });
        } finally {
          await dropKeys(own.url, env.QUEUE_PREFIX!);
        }
      });
    } finally {
      await db.drop();
    }
  });
});
