/**
 * The first hour of a new user or a deployer: a command started against a PostgreSQL that is not
 * there, a database not yet created, a port already taken. Each must end with status 1 and say, in
 * one line, what is wrong and which setting to fix — not a stack trace of pg-pool, kysely or
 * `node:net` frames (the release phase of a deploy shows nothing else).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { TEST_ADMIN_URL, TEST_APP, TEST_JWT_SECRET, TEST_OWNER, TEST_REDIS_URL, pgUrl } from '../helpers/env.ts';
import { freePort, startOwnPostgres } from '../helpers/own-infra.ts';
import pg from 'pg';
import { jsonLines } from '../helpers/api-process.ts';
import { waitFor, within } from '../helpers/poll.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const LONG = 120_000;
/** A frame of a stack trace, as Node prints one. */
const STACK_FRAME = /^\s+at /m;

/** A command-line entry started with only the given environment (killed after `killAfterMs`, 90 s): its output so far, and its end. */
function startEntry(args: string[], env: Record<string, string>, killAfterMs = 90_000) {
  const proc = spawn(process.execPath, args, {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', NODE_ENV: 'development', JWT_SECRET: TEST_JWT_SECRET, OTEL_SDK_DISABLED: 'true', REDIS_URL: TEST_REDIS_URL, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout.on('data', (d) => (out += d));
  proc.stderr.on('data', (d) => (out += d));
  const killer = setTimeout(() => proc.kill('SIGKILL'), killAfterMs);
  // 'close', not 'exit': at 'exit' the last of its output can still be in the pipe (node's docs), and
  // each test reads the entry's last line (its one-line error, `api could not start`, `telemetry flushed`).
  const exited = new Promise<{ code: number | null; out: string }>((resolve) =>
    proc.once('close', (code) => {
      clearTimeout(killer);
      resolve({ code, out });
    }),
  );
  return { proc, output: () => out, exited };
}

/** Runs a command-line entry to its end (killed after `killAfterMs`, 90 s), with only the given environment. */
function runEntry(args: string[], env: Record<string, string>, killAfterMs = 90_000): Promise<{ code: number | null; out: string }> {
  return startEntry(args, env, killAfterMs).exited;
}

let db: TestDatabase;
let closedPort: number;
beforeAll(async () => {
  db = await createTestDatabase();
  closedPort = await freePort();
});
afterAll(async () => db?.drop());

describe('npm run db:*', () => {
  it('db:migrate with PostgreSQL unreachable: one line naming MIGRATION_DATABASE_URL, exit 1', { timeout: LONG }, async () => {
    const { code, out } = await runEntry(['src/cli/db.ts', 'migrate'], {
      DATABASE_URL: db.appUrl,
      MIGRATION_DATABASE_URL: `postgres://dealix_owner:dealix_owner@127.0.0.1:${closedPort}/${db.name}`,
    });
    expect(code, out).toBe(1);
    expect(out.trim()).toBe(`db migrate failed: PostgreSQL is not reachable at 127.0.0.1:${closedPort} (connect ECONNREFUSED 127.0.0.1:${closedPort}). Start it, or point MIGRATION_DATABASE_URL at it.`);
  });

  it('db:migrate and db:check before db:setup created the database: say so, naming db:setup, exit 1', { timeout: LONG }, async () => {
    const missing = `dealix_t_missing_${randomBytes(4).toString('hex')}`;
    const env = { DATABASE_URL: pgUrl(TEST_APP, missing), MIGRATION_DATABASE_URL: pgUrl(TEST_OWNER, missing) };
    for (const command of ['migrate', 'check']) {
      const { code, out } = await runEntry(['src/cli/db.ts', command], env);
      expect(code, out).toBe(1);
      expect(out, out).not.toMatch(STACK_FRAME);
      expect(out.trim()).toMatch(new RegExp(`^db ${command} failed: the database ${missing} \\(MIGRATION_DATABASE_URL\\) does not exist at .+\`npm run db:setup\` creates it`));
    }
  });

  it('db:setup with a superuser URL whose role does not exist: one line naming DATABASE_ADMIN_URL, exit 1', { timeout: LONG }, async () => {
    const admin = new URL(TEST_ADMIN_URL);
    admin.username = `nobody_${randomBytes(4).toString('hex')}`;
    const { code, out } = await runEntry(['src/cli/db.ts', 'setup'], { DATABASE_ADMIN_URL: admin.toString(), DATABASE_URL: db.appUrl, MIGRATION_DATABASE_URL: db.ownerUrl });
    expect(code, out).toBe(1);
    expect(out, out).not.toMatch(STACK_FRAME);
    expect(out.trim()).toMatch(new RegExp(`^db setup failed: PostgreSQL refused the login of role ${admin.username} .+Check DATABASE_ADMIN_URL: it must name a superuser\\.$`));
  });
  it('db:setup with a DATABASE_ADMIN_URL role that may create roles but not databases: names that, not a missing database, exit 1', { timeout: 180_000 }, async () => {
    // A cluster of our own: the shared one's roles are not ours to add to.
    const own = await startOwnPostgres();
    try {
      const su = new pg.Client({ connectionString: own.adminUrl });
      await su.connect();
      await su.query('CREATE ROLE half_admin LOGIN CREATEROLE NOCREATEDB');
      await su.end();
      const url = (user: string, database: string) => `postgres://${user}@127.0.0.1:${own.port}/${database}`;
      const { code, out } = await runEntry(['src/cli/db.ts', 'setup'], {
        DATABASE_ADMIN_URL: url('half_admin', 'postgres'),
        DATABASE_URL: url('dealix_app', 'dealix_half'),
        MIGRATION_DATABASE_URL: url('dealix_owner', 'dealix_half'),
      });
      expect(code, out).toBe(1);
      expect(out, out).not.toMatch(STACK_FRAME);
      // Was: 'the database postgres (DATABASE_ADMIN_URL) does not exist … `npm run db:setup` creates it', the command just run.
      expect(out.trim()).toMatch(/^db setup failed: role half_admin at 127\.0\.0\.1:\d+ lacks a privilege db:setup needs \(permission denied to create database\)\. Check DATABASE_ADMIN_URL: it must name a superuser\.$/);
    } finally {
      await own.destroy();
    }
  });
});

describe('npm run demo', () => {
  it('the owner URL unreachable while the application URL works: names MIGRATION_DATABASE_URL, not DATABASE_URL', { timeout: LONG }, async () => {
    const { code, out } = await runEntry(['src/cli/demo.ts'], {
      DATABASE_URL: db.appUrl,
      MIGRATION_DATABASE_URL: `postgres://dealix_owner:dealix_owner@127.0.0.1:${closedPort}/${db.name}`,
      QUEUE_PREFIX: `tdemofail${randomBytes(4).toString('hex')}`,
      PORT: '0',
    });
    expect(code, out).toBe(1);
    expect(out).toContain(`demo failed: PostgreSQL is not reachable at 127.0.0.1:${closedPort} (connect ECONNREFUSED 127.0.0.1:${closedPort}). Start it, or point MIGRATION_DATABASE_URL at it.`);
  });
});

describe('npm run start:api', () => {
  it('its port already taken: one fatal JSON line `api could not start` and exit 1, no bare stack trace', { timeout: LONG }, async () => {
    const taken = createServer();
    await new Promise<void>((r) => taken.listen(0, () => r()));
    try {
      const port = (taken.address() as { port: number }).port;
      const { code, out } = await runEntry(['src/server.ts'], {
        DATABASE_URL: db.appUrl,
        MIGRATION_DATABASE_URL: db.ownerUrl,
        QUEUE_PREFIX: `tapiport${randomBytes(4).toString('hex')}`,
        PORT: String(port),
      });
      expect(code, out).toBe(1);
      // Every line is a structured log line.
      expect(out.split('\n').filter((l) => l !== '' && !l.startsWith('{'))).toEqual([]);
      const lines = jsonLines(out);
      expect(lines.at(-1)).toMatchObject({ level: 60, msg: 'api could not start', port, err: { code: 'EADDRINUSE' } });
      expect(lines.map((l) => l.msg)).not.toContain('api listening');
    } finally {
      taken.close();
    }
  });
});

describe('a failed start whose close hangs', () => {
  it('exits 1 once the close deadline passes, with a line saying so, instead of living on', { timeout: LONG }, async () => {
    // What server.ts and worker-runtime.ts do after `api/worker could not start`, with a close that never
    // settles while a connection keeps the event loop alive (a dependency that stopped answering). No
    // real dependency was found to hang the container's close (Redis refusing or silent, PostgreSQL
    // silent: each closes within seconds), so the hang is made here, in a real process.
    const script = [
      "import { createLogger } from './src/platform/telemetry/logger.ts';",
      "import { exitAfterFailedStart } from './src/platform/process/shutdown.ts';",
      "const logger = createLogger({ level: 'info', name: 'dealix-api' });",
      'setInterval(() => {}, 1000);',
      "logger.fatal('api could not start');",
      'exitAfterFailedStart(logger, () => new Promise(() => {}), 200);',
    ].join('\n');
    // Killed after 30 s: the unbounded close it replaced never exited at all.
    const { code, out } = await runEntry(['--input-type=module', '-e', script], {}, 30_000);
    expect(code, out).toBe(1);
    const lines = jsonLines(out);
    expect(lines.map((l) => l.msg)).toEqual(['api could not start', 'closing after the failed start took too long; exiting without waiting for it']);
    expect(lines[1]).toMatchObject({ level: 50, close_ms: 200 });
  });

  // What both entries install beside it: the signal handlers (onShutdown), with the API's quick close,
  // and a telemetry shutdown that says when it ran. `close` is the failed start's close.
  const failedStart = (close: string, closeMs: number) =>
    [
      "import { createLogger } from './src/platform/telemetry/logger.ts';",
      "import { exitAfterFailedStart, onShutdown } from './src/platform/process/shutdown.ts';",
      "import { setTelemetryShutdown } from './src/platform/telemetry/otel-hooks.ts';",
      "const logger = createLogger({ level: 'info', name: 'dealix-api' });",
      "setTelemetryShutdown(async () => logger.info('telemetry flushed'));",
      'onShutdown(logger, 1000, async () => {});',
      'setInterval(() => {}, 1000);',
      "logger.fatal('api could not start');",
      `exitAfterFailedStart(logger, ${close}, ${closeMs});`,
    ].join('\n');

  it('a signal while it closes ends it with 1 at once, not with the graceful stop\'s "shut down cleanly" and 0', { timeout: LONG }, async () => {
    // A supervisor stopping the process meanwhile (a deploy rolling back, a pod deleted). The signal
    // handlers ran their own close beside the failed start's and exited 0 after "shut down cleanly":
    // the failure was reported as a clean stop.
    const entry = startEntry(['--input-type=module', '-e', failedStart('() => new Promise(() => {})', 60_000)], {}, 30_000);
    try {
      await waitFor(() => jsonLines(entry.output()).some((l) => l.msg === 'api could not start'), { timeoutMs: 20_000, what: 'the failed start' });
      entry.proc.kill('SIGTERM');
      // Long before the 60 s close deadline: the signal ended it.
      const { code, out } = await within(entry.exited, 'the exit after the signal', 25_000);
      expect(code, out).toBe(1);
      expect(jsonLines(out).map((l) => l.msg)).toEqual(['api could not start', 'signal while closing after the failed start: exiting at once']);
    } finally {
      entry.proc.kill('SIGKILL');
    }
  });

  it("once closed, the failed start's spans are flushed before the exit, as at any stop", { timeout: LONG }, async () => {
    const { code, out } = await runEntry(['--input-type=module', '-e', failedStart('async () => {}', 20_000)], {}, 30_000);
    expect(code, out).toBe(1);
    expect(jsonLines(out).map((l) => l.msg)).toEqual(['api could not start', 'telemetry flushed']);
  });
});
