/**
 * `npm run demo` as a new user runs it: src/cli/demo.ts as a child process on a database of its own
 * (cloned from the migrated template) and a queue prefix of its own, starting its own API and worker.
 * It must end 0 having shown the platform's webhooks: its receiver registered as the tenant's
 * endpoint, and the class B run's approval.requested and run.completed received and verified — the
 * webhook-ids it prints are the deliveries the endpoint's log shows delivered — and it must leave no
 * endpoint behind (its receiver stops with it). Then the demo's
 * receiver on its own: a webhook signed with another secret fails the demo's wait, and a repeated
 * webhook-id is kept once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { randomBytes, randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { TEST_ADMIN_URL, TEST_JWT_SECRET, TEST_REDIS_URL } from '../helpers/env.ts';
import { DemoWebhookReceiver } from '../../src/demo/webhook-receiver.ts';
import { DemoError, until } from '../../src/demo/demo-support.ts';
import { DemoProcesses } from '../../src/demo/demo-processes.ts';
import { signedHeaders } from '../../src/platform/webhooks/send.ts';
import { waitFor, within } from '../helpers/poll.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const UUID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}';

/** The demo's environment on a database and a queue prefix of its own (no .env: the demo reads only this). */
const demoEnv = (db: TestDatabase, prefix: string): Record<string, string> => ({
  PATH: process.env.PATH ?? '',
  NODE_ENV: 'development',
  DATABASE_URL: db.appUrl,
  MIGRATION_DATABASE_URL: db.ownerUrl,
  DATABASE_ADMIN_URL: TEST_ADMIN_URL,
  REDIS_URL: TEST_REDIS_URL,
  QUEUE_PREFIX: prefix,
  JWT_SECRET: TEST_JWT_SECRET,
  PORT: '0',
  OTEL_SDK_DISABLED: 'true',
  // As .env.example: the guard on. The demo turns it off for its own children only.
  WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'false',
});

/**
 * Ends a demo a test started and has given up on (its wait timed out, an assertion failed): SIGTERM,
 * which its handler turns into a stop of its API and worker, then SIGKILL if it has not exited 30 s on.
 * Not SIGKILL first: the children run in process groups of their own and would outlive it.
 */
async function endDemo(proc: ChildProcess | undefined): Promise<void> {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((resolve) => proc.once('exit', resolve));
  proc.kill('SIGTERM');
  await within(exited, 'the demo to stop after SIGTERM', 30_000).catch(() => proc.kill('SIGKILL'));
}

describe('npm run demo', () => {
  let db: TestDatabase;
  let demo: ChildProcess | undefined;
  const prefix = `tdemo${randomBytes(4).toString('hex')}`;
  let out = '';
  let code: number | null = null;

  // .env's WORKER_METRICS_PORT held by another process (the lead's worker, say): the demo moves it, as it moves PORT.
  const taken = createServer();
  let takenPort = 0;

  beforeAll(async () => {
    db = await createTestDatabase();
    await new Promise<void>((r) => taken.listen(0, () => r()));
    takenPort = (taken.address() as AddressInfo).port;
    const proc = spawn(process.execPath, ['src/cli/demo.ts'], {
      cwd: ROOT,
      env: { ...demoEnv(db, prefix), WORKER_METRICS_PORT: String(takenPort) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    demo = proc;
    proc.stdout.on('data', (d) => (out += d));
    proc.stderr.on('data', (d) => (out += d));
    // 'close': its output read to the end ('exit' can come before the last of it: its verdict). With a
    // deadline under the hook's, so a demo that hangs fails here and afterAll still stops it and its children.
    code = await within(new Promise<number | null>((resolve) => proc.once('close', (c) => resolve(c))), `the demo to end; its output so far:\n${out}`, 150_000);
  }, 180_000);

  afterAll(async () => {
    await endDemo(demo);
    taken.close();
    const redis = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
    const keys = await redis.keys(`${prefix}:*`);
    for (let i = 0; i < keys.length; i += 500) await redis.del(...keys.slice(i, i + 500));
    redis.disconnect();
    await db?.drop();
  });

  it('succeeds, and prints the class B run approval.requested, approval.decided and run.completed webhooks, each verified with the secret from the create', async () => {
    expect(code, out).toBe(0);
    expect(out).toContain('The demo succeeded');
    expect(out).toMatch(new RegExp(`port ${takenPort} \\(the worker metrics\\) is in use; using \\d+ instead`));
    expect(out).toContain('WEBHOOK_ALLOW_PRIVATE_NETWORKS=true for these two only');
    expect(out).toMatch(new RegExp(`201 Created: endpoint ${UUID} for approval\\.requested, approval\\.decided, run\\.completed`));
    const printed = [...out.matchAll(new RegExp(`webhook  (\\S+)\\s+signature verified  webhook-id (${UUID})`, 'g'))].map((m) => ({ type: m[1], id: m[2] }));
    expect(printed.map((p) => p.type)).toEqual(['approval.requested', 'approval.decided', 'run.completed']);
    expect(out).toContain('3 received and verified; 0 repeated webhook-id(s) dropped');
    // What the demo printed is what the platform delivered: the endpoint's delivery log, read before the demo deleted it.
    const endpointId = new RegExp(`201 Created: endpoint (${UUID})`).exec(out)?.[1];
    expect(out).toContain(`log       GET /api/v1/webhook-endpoints/${endpointId}/deliveries: the three webhook-ids above, delivered`);
    // Its API listened on this machine only (its SSRF guard is off).
    expect(out).toMatch(/API ready at http:\/\/127\.0\.0\.1:\d+ \(pid \d+\), listening on this machine only/);
    // Its receiver stopped with it: its endpoint is gone, with its deliveries, and nothing is left to deliver to it.
    expect(out).toContain(`Deleted the demo's webhook endpoint ${endpointId} and its deliveries`);
    expect((await db.admin(`select count(*)::int as n from webhook_endpoints`)).rows[0].n).toBe(0);
    expect((await db.admin(`select count(*)::int as n from webhook_deliveries`)).rows[0].n).toBe(0);
  });
});

describe("the demo's children", () => {
  it('one that exits while the demo waits: the demo fails naming it and the reason its last error line gives', { timeout: 60_000 }, async () => {
    const procs = new DemoProcesses();
    const fatal = JSON.stringify({ level: 60, msg: 'worker could not start', err: { message: 'listen EADDRINUSE: address already in use :::9464' } });
    procs.start('worker', ['-e', `console.log(${JSON.stringify(fatal)}); process.exit(1)`], { PATH: process.env.PATH ?? '' });
    try {
      await expect(until('the worker to start', 30_000, async () => undefined, procs.assertAlive)).rejects.toThrow(
        'the worker exited (code 1): worker could not start: listen EADDRINUSE: address already in use :::9464 while waiting for the worker to start',
      );
    } finally {
      await procs.stopAll(5_000);
    }
  });
});

/** A process that has not exited (a zombie, exited but not yet reaped by its new parent, counts as exited). */
const running = (pid: number) => existsSync(`/proc/${pid}`) && !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
/** Still the demo's API or worker: a pid, once free, can be another process's (never ours to kill). */
const demoChild = (pid: number) => {
  try {
    return running(pid) && /src\/server\.ts|golden-path\.worker\.ts/.test(readFileSync(`/proc/${pid}/cmdline`, 'utf8'));
  } catch {
    return false; // gone meanwhile
  }
};

describe('npm run demo ended from outside: its API and worker end with it', () => {
  let db: TestDatabase;
  const prefix = `tdemoend${randomBytes(4).toString('hex')}`;
  const pids: number[] = [];
  const demos: ChildProcess[] = [];

  beforeAll(async () => {
    db = await createTestDatabase();
  }, 60_000);
  afterAll(async () => {
    // A test that failed may leave its demo running (it did not exit on the signal): stop it, then what it left.
    for (const d of demos) await endDemo(d);
    for (const pid of pids) if (demoChild(pid)) process.kill(pid, 'SIGKILL');
    const redis = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
    const keys = await redis.keys(`${prefix}:*`);
    for (let i = 0; i < keys.length; i += 500) await redis.del(...keys.slice(i, i + 500));
    redis.disconnect();
    await db?.drop();
  });

  /** The demo as a child process, its output collected until `until` appears; the children's pids it printed. */
  async function startDemo(args: string[], until: string): Promise<{ proc: ChildProcessWithoutNullStreams; exited: Promise<number | null>; children: number[] }> {
    const proc = spawn(process.execPath, ['src/cli/demo.ts', ...args], {
      cwd: ROOT,
      env: demoEnv(db, prefix),
    });
    demos.push(proc);
    const exited = new Promise<number | null>((resolve) => proc.once('exit', (c) => resolve(c)));
    let out = '';
    proc.stdout.on('data', (d) => (out += d));
    proc.stderr.on('data', (d) => (out += d));
    try {
      await waitFor(() => out.includes(until) || proc.exitCode !== null, { timeoutMs: 90_000, what: until });
      const children = [/API ready at \S+ \(pid (\d+)\)/, /worker started \(pid (\d+)\)/].map((re) => Number(re.exec(out)?.[1]));
      pids.push(...children.filter((p) => p > 0));
      expect(children.every((p) => p > 0), out).toBe(true);
      return { proc, exited, children };
    } catch (e) {
      await endDemo(proc);
      throw e;
    }
  }

  it('SIGHUP (the terminal closed) with --keep-running: the demo stops both children and exits', { timeout: 180_000 }, async () => {
    const demo = await startDemo(['--keep-running'], 'press Ctrl-C to stop them');
    demo.proc.kill('SIGHUP');
    await waitFor(() => demo.proc.exitCode !== null || demo.proc.signalCode !== null, { timeoutMs: 60_000, what: 'the demo to exit' });
    await waitFor(() => demo.children.every((pid) => !running(pid)), { timeoutMs: 60_000, what: "the demo's API and worker to exit" });
  });

  it('its output closed (`npm run demo | head`): the demo dies of EPIPE, and its children are stopped all the same', { timeout: 180_000 }, async () => {
    const demo = await startDemo([], 'worker started');
    demo.proc.stdout.destroy();
    demo.proc.stderr.destroy();
    await waitFor(() => demo.proc.exitCode !== null || demo.proc.signalCode !== null, { timeoutMs: 60_000, what: 'the demo to exit' });
    await waitFor(() => demo.children.every((pid) => !running(pid)), { timeoutMs: 60_000, what: "the demo's API and worker to exit" });
  });
});

describe("the demo's webhook receiver", () => {
  let receiver: DemoWebhookReceiver;
  const secret = `whsec_${randomBytes(32).toString('base64')}`;
  const post = (body: string, headers: Record<string, string>) => fetch(receiver.url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body });
  const message = (runId: string) => JSON.stringify({ type: 'run.completed', timestamp: new Date().toISOString(), data: { run_id: runId, status: 'completed' } });

  beforeAll(async () => {
    receiver = await DemoWebhookReceiver.start();
    receiver.useSecret(secret);
  });
  afterAll(async () => receiver?.close());

  it('keeps a repeated webhook-id once (answered 200 both times, counted as a repeat)', async () => {
    const runId = randomUUID();
    const id = randomUUID();
    const body = message(runId);
    for (let i = 0; i < 2; i++) expect((await post(body, signedHeaders([secret], id, body))).status).toBe(200);
    expect(receiver.find('run.completed', runId)).toMatchObject({ id, data: { run_id: runId } });
    expect([...receiver.received.keys()].filter((k) => k === id)).toHaveLength(1);
    expect(receiver.duplicates).toBe(1);
  });

  it('answers 400 to a webhook signed with another secret, and the demo waiting for it fails naming it', async () => {
    const runId = randomUUID();
    const id = randomUUID();
    const body = message(runId);
    expect((await post(body, signedHeaders([`whsec_${randomBytes(32).toString('base64')}`], id, body))).status).toBe(400);
    expect(receiver.find('run.completed', runId)).toBeUndefined();
    const waited = until('the run.completed webhook', 30_000, async () => receiver.find('run.completed', runId), receiver.assertVerified);
    await expect(waited).rejects.toThrow(DemoError);
    await expect(waited).rejects.toThrow(new RegExp(`a webhook did not verify with the endpoint's secret \\(webhook-id ${id}: .+\\) while waiting for the run.completed webhook`));
    // Once refused, every later wait fails too: the demo cannot end 0 after a webhook that did not verify.
    expect(() => receiver.assertVerified()).toThrow(DemoError);
  });
});
