import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { waitFor } from './poll.ts';

const run = promisify(execFile);

/** A port nobody listens on right now (the kernel's choice). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export interface OwnRedis {
  url: string;
  /** A client on this server only: fault tests may FLUSHALL it (never the shared Redis). */
  client: Redis;
  /** Kills the server (like a crash) for an outage; startServer brings it back, empty, on the same port. */
  stopServer(): Promise<void>;
  startServer(): Promise<void>;
  /** The end: the client disconnected and the server gone. */
  stop(): Promise<void>;
}

/** A private redis-server for one test file, so it can be flushed or stopped without touching anyone else's queues. */
export async function startOwnRedis(): Promise<OwnRedis> {
  const port = await freePort();
  const url = `redis://127.0.0.1:${port}`;
  const client = new Redis(url, { maxRetriesPerRequest: 1, lazyConnect: true, retryStrategy: () => 100 });
  client.on('error', () => {});
  let proc: ChildProcess | undefined;
  const self: OwnRedis = {
    url,
    client,
    async startServer() {
      proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
      await waitFor(async () => (await client.ping().catch(() => '')) === 'PONG', { timeoutMs: 15_000, what: 'own redis-server' });
    },
    async stopServer() {
      const p = proc;
      if (!p || p.exitCode !== null || p.signalCode !== null) return;
      const exited = new Promise((r) => p.once('exit', r));
      p.kill('SIGKILL');
      await exited;
    },
    async stop() {
      client.disconnect();
      await self.stopServer();
    },
  };
  await self.startServer();
  return self;
}

export interface OwnPostgres {
  port: number;
  adminUrl: string;
  /** With `ssl`: the server's self-signed certificate (PEM file, for `sslrootcert`), issued to `localhost`. */
  certFile?: string;
  stop(): Promise<void>;
  start(): Promise<void>;
  destroy(): Promise<void>;
}

/**
 * PostgreSQL's server binaries (initdb, pg_ctl), whichever version is installed: PG_BIN if set, else
 * pg_config's bindir, else the newest under /usr/lib/postgresql (Debian's layout, where pg_config may
 * come from the client package only).
 */
export async function pgBinDir(): Promise<string> {
  if (process.env.PG_BIN) return process.env.PG_BIN;
  try {
    const { stdout } = await run('pg_config', ['--bindir']);
    const dir = stdout.trim();
    if (existsSync(join(dir, 'pg_ctl'))) return dir;
  } catch {
    // not installed; try the Debian layout
  }
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root) ? readdirSync(root).sort((a, b) => Number(b) - Number(a)) : [];
  for (const v of versions) if (existsSync(join(root, v, 'bin', 'pg_ctl'))) return join(root, v, 'bin');
  throw new Error('PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql, or set PG_BIN');
}

const AS_ROOT = process.getuid?.() === 0;

/** Runs a PostgreSQL binary: as the postgres OS user when the tests run as root (initdb and the server refuse root), else as ourselves. */
async function asPostgres(bin: string, args: string[]): Promise<void> {
  const path = join(await pgBinDir(), bin);
  if (AS_ROOT) await run('runuser', ['-u', 'postgres', '--', path, ...args], { timeout: 60_000 });
  else await run(path, args, { timeout: 60_000 });
}

/**
 * A throwaway PostgreSQL cluster under /tmp on a free port, trust auth on 127.0.0.1, so a test can
 * stop and start the database without touching the shared server. `ssl`: TLS on, with a self-signed
 * certificate for `localhost` (plain connections are accepted too, as with ssl=on in general).
 */
export async function startOwnPostgres(opts: { ssl?: boolean } = {}): Promise<OwnPostgres> {
  const port = await freePort();
  const dir = await mkdtemp(join(tmpdir(), 'dealix-pg-'));
  await chmod(dir, 0o700);
  if (AS_ROOT) await run('chown', ['postgres:postgres', dir]);
  const data = join(dir, 'data');
  await asPostgres('initdb', ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync', '-E', 'UTF8']);
  const pgctl = (...args: string[]) => asPostgres('pg_ctl', ['-D', data, '-l', join(dir, 'server.log'), ...args]);
  let serverOpts = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60`;
  const certFile = join(dir, 'server.crt');
  if (opts.ssl) {
    const keyFile = join(dir, 'server.key');
    await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost', '-keyout', keyFile, '-out', certFile]);
    // The server refuses a key file others may read, or (run as root) one it does not own.
    await chmod(keyFile, 0o600);
    if (AS_ROOT) await run('chown', ['postgres:postgres', keyFile, certFile]);
    serverOpts += ` -c ssl=on -c ssl_cert_file=${certFile} -c ssl_key_file=${keyFile}`;
  }
  const self: OwnPostgres = {
    port,
    adminUrl: `postgres://postgres@127.0.0.1:${port}/postgres`,
    ...(opts.ssl ? { certFile } : {}),
    start: () => pgctl('-o', serverOpts, '-w', 'start'),
    stop: () => pgctl('-m', 'fast', '-w', 'stop'),
    async destroy() {
      await pgctl('-m', 'immediate', '-w', 'stop').catch(() => {});
      await rm(dir, { recursive: true, force: true });
    },
  };
  await self.start();
  return self;
}

