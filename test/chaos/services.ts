import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import pg from 'pg';
import { parseConfig } from '../../src/platform/config/config.ts';
import { setupDatabase } from '../../src/platform/db/roles.ts';
import { migrate } from '../../src/platform/db/migrate.ts';
import { entities } from '../../src/entities.ts';
import { TEST_APP, TEST_JWT_SECRET, TEST_OWNER } from '../helpers/env.ts';
import { waitFor } from '../helpers/poll.ts';

/**
 * The services a chaos or load run uses. Faults are injected ONLY into services this file started
 * (a redis-server and a PostgreSQL cluster on free ports under the run's directory): the shared
 * Redis and PostgreSQL of the machine carry other people's tests and are never flushed or restarted.
 */

const run = promisify(execFile);

import { freePort, pgBinDir } from '../helpers/own-infra.ts';

export { freePort };

export interface OwnRedis {
  url: string;
  /** FLUSHALL on this run's own redis-server: every queue, job, lock and timer is gone. */
  flush(): Promise<void>;
  stop(): Promise<void>;
}

export async function startOwnRedis(dir: string): Promise<OwnRedis> {
  const port = await freePort();
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--maxmemory-policy', 'noeviction'], {
    stdio: 'ignore',
  });
  const url = `redis://127.0.0.1:${port}`;
  const admin = new Redis(url, { maxRetriesPerRequest: 1, lazyConnect: true, retryStrategy: () => 200 });
  admin.on('error', () => {});
  await waitFor(async () => (await admin.ping().catch(() => '')) === 'PONG', { timeoutMs: 20_000, what: 'own redis-server' });
  return {
    url,
    flush: async () => void (await admin.flushall()),
    async stop() {
      admin.disconnect();
      await stopChild(proc);
    },
  };
}

export async function stopChild(proc: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  proc.kill(signal);
  const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

export interface OwnPostgres {
  adminUrl: string;
  /** Immediate shutdown (like a crash: no checkpoint, clients cut off), `downMs` of outage, start again. */
  restart(downMs: number): Promise<void>;
  stop(): Promise<void>;
}

export async function startOwnPostgres(dir: string): Promise<OwnPostgres> {
  const bin = await pgBinDir();
  const data = join(dir, 'pgdata');
  mkdirSync(data, { recursive: true });
  // initdb refuses to run as root: run the server tools as the postgres user then.
  const asRoot = process.getuid?.() === 0;
  if (asRoot) {
    const { stdout } = await run('id', ['-u', 'postgres']);
    const uid = Number(stdout.trim());
    const gid = Number((await run('id', ['-g', 'postgres'])).stdout.trim());
    chownSync(dir, uid, gid);
    chownSync(data, uid, gid);
  }
  const tool = (name: string, args: string[]) => (asRoot ? run('runuser', ['-u', 'postgres', '--', join(bin, name), ...args]) : run(join(bin, name), args));
  await tool('initdb', ['-D', data, '-U', 'postgres', '-A', 'trust', '-E', 'UTF8', '--locale=C', '--no-sync']);
  const port = await freePort();
  const opts = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c full_page_writes=off`;
  const start = () => tool('pg_ctl', ['-D', data, '-o', opts, '-l', join(dir, 'postgres.log'), '-w', '-t', '60', 'start']);
  const stopNow = (mode: 'immediate' | 'fast') => tool('pg_ctl', ['-D', data, '-m', mode, '-w', 'stop']);
  await start();
  return {
    adminUrl: `postgres://postgres@127.0.0.1:${port}/postgres`,
    async restart(downMs) {
      await stopNow('immediate');
      await new Promise((r) => setTimeout(r, downMs));
      await start();
    },
    async stop() {
      await stopNow('immediate').catch(() => {});
    },
  };
}

export interface ChaosDatabase {
  name: string;
  appUrl: string;
  ownerUrl: string;
  /** Superuser in the run's database: for the end-of-run checks (observation, never isolation). */
  adminDbUrl: string;
  drop(): Promise<void>;
}

function withDb(url: string, db: string, role?: { user: string; password: string }): string {
  const u = new URL(url);
  u.pathname = `/${db}`;
  if (role) {
    u.username = role.user;
    u.password = role.password;
  }
  return u.toString();
}

/**
 * A fresh, migrated database of its own (not named like the test suite's, so a concurrent suite's
 * clean-up of stale test databases can never touch it), with the same roles as production.
 */
export async function createChaosDatabase(adminUrl: string): Promise<ChaosDatabase> {
  const name = `dealix_chaos_${randomBytes(5).toString('hex')}`;
  const appUrl = withDb(adminUrl, name, TEST_APP);
  const ownerUrl = withDb(adminUrl, name, TEST_OWNER);
  await setupDatabase({ adminUrl, ownerUrl, appUrl });
  await migrate(parseConfig({ JWT_SECRET: TEST_JWT_SECRET, DATABASE_URL: appUrl, MIGRATION_DATABASE_URL: ownerUrl }), entities);
  return {
    name,
    appUrl,
    ownerUrl,
    adminDbUrl: withDb(adminUrl, name),
    async drop() {
      const c = new pg.Client({ connectionString: adminUrl });
      await c.connect();
      try {
        await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await c.end();
      }
    },
  };
}
