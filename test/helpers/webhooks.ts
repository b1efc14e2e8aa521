/**
 * Webhook test helpers: a real node:http receiver on 127.0.0.1 and the API calls the webhook tests
 * repeat (an endpoint's create, a run's submission and end).
 */
import { afterAll, beforeAll, expect } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import pg from 'pg';
import { Webhook } from 'standardwebhooks';
import { api, newTenant, runUsers, SAMPLE_SUBMISSION, startStack, type TestStack, type WorkerHandle } from './stack.ts';
import { waitFor } from './poll.ts';
import { backendPid, countBlockedBy } from './lock-graph.ts';
import type { Redis } from 'ioredis';
import type { monitorKeys } from './redis-monitor.ts';

interface Received {
  path: string;
  /** When the request arrived (performance.now(), this process's monotonic clock), before its body was read. */
  at: number;
  headers: IncomingHttpHeaders;
  body: string;
}

/** A receiver: records every POST; answers each path's planned statuses in turn, then 200 ('hold': no answer until `release()`, which answers 200 or the status it is given; 101: switches protocols and holds the connection). */
export async function startReceiver() {
  const received: Received[] = [];
  const plans = new Map<string, (number | 'hold')[]>();
  const held: ServerResponse[] = [];
  const server: Server = createServer((req, res) => {
    const at = performance.now();
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const path = req.url ?? '/';
      received.push({ path, at, headers: req.headers, body });
      const status = plans.get(path)?.shift() ?? 200;
      if (status === 'hold') return void held.push(res);
      // 101 Switching Protocols, then the connection held open and nothing more (a WebSocket server, a hostile receiver).
      if (status === 101) return void req.socket.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
      res.writeHead(status, { 'content-type': 'text/plain' }).end(status === 200 ? 'ok' : 'no');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    base,
    received,
    plan: (path: string, statuses: (number | 'hold')[]) => plans.set(path, statuses),
    /** Answers `status` (200 by default) to every request a 'hold' kept waiting. */
    release: (status = 200) => held.splice(0).forEach((res) => res.writeHead(status, { 'content-type': 'text/plain' }).end(status === 200 ? 'ok' : 'no')),
    /** What `path` got, as {type, timestamp, data}, each verified against `secret` (throws if one does not verify). */
    verified(path: string, secret: string) {
      const wh = new Webhook(secret);
      return received.filter((r) => r.path === path).map((r) => wh.verify(r.body, r.headers as Record<string, string>) as { type: string; timestamp: string; data: Record<string, unknown> });
    },
    close: () => {
      held.splice(0).forEach((res) => res.destroy());
      return new Promise<void>((r) => server.close(() => r()));
    },
  };
}

export type Receiver = Awaited<ReturnType<typeof startReceiver>>;

export const ENDPOINTS = '/api/v1/webhook-endpoints';

export async function createEndpoint(stack: TestStack, token: string, body: unknown) {
  return api(stack, 'POST', ENDPOINTS, { token, body, headers: { 'Idempotency-Key': randomUUID() } });
}

export async function submit(stack: TestStack, token: string, body: unknown): Promise<string> {
  const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token, body, headers: { 'Idempotency-Key': randomUUID() } });
  expect(res.status, res.text).toBe(202);
  return res.json.run_id as string;
}

export async function waitRun(stack: TestStack, token: string, id: string, statuses: string[]) {
  return waitFor(
    async () => {
      const res = await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token });
      return statuses.includes(res.json?.status) ? res.json : undefined;
    },
    { timeoutMs: 60_000, intervalMs: 100, what: `run ${id} to reach ${statuses.join('|')}` },
  );
}

/** A tenant with an admin token and an endpoint at `receiver.base + path` for `events`. */
export async function tenantWithEndpoint(stack: TestStack, receiver: Receiver, path: string, events: string[]) {
  const tenantId = newTenant();
  const admin = await stack.token({ tenantId, sub: `admin-${path.slice(1)}`, roles: ['admin'] });
  const created = await createEndpoint(stack, admin, { url: `${receiver.base}${path}`, events, description: `receiver ${path}` });
  expect(created.status, created.text).toBe(201);
  expect(created.json.secret).toMatch(/^whsec_[A-Za-z0-9+/]+=*$/);
  return { tenantId, admin, endpoint: created.json as { id: string; secret: string } };
}

/**
 * A new tenant with an endpoint subscribed to `events` (tenantWithEndpoint) and one golden-path run
 * (class B) waiting for its approval at step 3: the run's id, its request's, the tenant's users.
 */
export async function waitingRunWithEndpoint(stack: TestStack, receiver: Receiver, path: string, events: string[]) {
  const { tenantId } = await tenantWithEndpoint(stack, receiver, path, events);
  const tok = await runUsers(stack, tenantId);
  const id = await submit(stack, tok.submitter, SAMPLE_SUBMISSION);
  const waiting = await waitRun(stack, tok.submitter, id, ['waiting', 'failed', 'completed']);
  expect(waiting.status).toBe('waiting');
  return { tenantId, tok, id, approvalId: waiting.steps[2].output.approval_request_id as string };
}

/**
 * A stack that admits private receivers (`env` over that), a receiver, and a spawned worker process
 * delivering to it (with `workerEnv`, e.g. WORKER_METRICS_PORT).
 */
export async function startWebhookStack(env: Record<string, string>, workerEnv: Record<string, string> = {}): Promise<{ stack: TestStack; receiver: Receiver; worker: WorkerHandle }> {
  const stack = await startStack({ env: { WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true', ...env } });
  const receiver = await startReceiver();
  const worker = await stack.spawnWorker(workerEnv);
  return { stack, receiver, worker };
}

/** Stops what startWebhookStack started (either may be missing: a start that failed). */
export async function stopWebhookStack(stack: TestStack | undefined, receiver: Receiver | undefined): Promise<void> {
  await receiver?.close();
  await stack?.stop();
}

/**
 * For the describe that calls it: a webhook stack (startWebhookStack) with fast retries and
 * `maxAttempts` attempts per delivery (`env` over those), started before its tests and stopped after
 * them. Read `stack` and `receiver` from the returned object inside the tests (they are set by then).
 */
export function webhookStackForTests(maxAttempts: number, env: Record<string, string> = {}): { stack: TestStack; receiver: Receiver } {
  const ctx = {} as { stack: TestStack; receiver: Receiver };
  beforeAll(async () => {
    Object.assign(ctx, await startWebhookStack({ WEBHOOK_RETRY_BASE: '50ms', WEBHOOK_MAX_ATTEMPTS: String(maxAttempts), ...env }));
  }, 120_000);
  afterAll(() => stopWebhookStack(ctx.stack, ctx.receiver));
  return ctx;
}

/**
 * A run's end, still open: a connection of its own (the admin role) in a transaction that inserted a
 * pending delivery for endpoint `endpointId` of `tenantId`, which holds KEY SHARE on the endpoint row
 * (the foreign key); `pid`, its backend's, is the holder the lock graph names (lock-graph.ts).
 * `close()` rolls it back and ends the connection.
 */
export async function openRunEnd(stack: TestStack, tenantId: string, endpointId: string): Promise<{ pid: number; close(): Promise<void> }> {
  const client = new pg.Client({ connectionString: stack.db.adminUrl });
  await client.connect();
  const close = async () => {
    await client.query('rollback').catch(() => {});
    await client.end();
  };
  try {
    const pid = await backendPid((sql, params) => client.query(sql, params));
    await client.query('begin');
    await client.query(
      `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, next_attempt_at, created_at, updated_at)
       values (gen_random_uuid(), $1, $2, 'run.completed', '{}'::jsonb, 'pending', 0, now() + interval '1 day', now(), now())`,
      [tenantId, endpointId],
    );
    return { pid, close };
  } catch (err) {
    await close();
    throw err;
  }
}

/**
 * `request`'s answer, once it answered; it fails if the request's statement is seen waiting for a lock
 * the backend `holder` holds, by the lock graph (pg_blocking_pids) — not by pg_stat_activity's query
 * text, which for a backend waiting inside a message of several statements may show another of them,
 * so that a wait went unseen. Read on connections of its own, outside the holder's transaction, which
 * would keep its first reading of pg_stat_activity (a snapshot per transaction).
 */
export async function answeredUnblocked(stack: TestStack, holder: number, request: Promise<Awaited<ReturnType<typeof api>>>, what: string): Promise<Awaited<ReturnType<typeof api>>> {
  let answered = false;
  const answer = request.finally(() => (answered = true));
  const first = await waitFor(
    async () =>
      answered ? 'answered'
      : (await countBlockedBy(stack.db.admin, holder)) > 0 ? 'waiting for the lock'
      : false,
    { timeoutMs: 60_000, what: `${what} to answer or wait` },
  );
  expect(first, `${what} behind the lock holder's open transaction`).toBe('answered');
  return answer;
}

/**
 * When an endpoint's limiter let each of its POSTs go, oldest first (µs, Redis's clock): the take script
 * records it as the endpoint's `last` (an HSET on its state key, `<prefix>:endpoint-rate:<id>`), which
 * `monitor` (monitorKeys on the rate keys) reports as the script runs; read once MONITOR has reported
 * every command sent so far. The spacing a limit promises is checked here, not on a receiver's arrival
 * stamps: an arrival is later than its let-go by the worker's work before the POST and the request's
 * way, unbounded on a loaded machine (seen: 570 ms past a 97 ms attempt, where 250 ms were allowed).
 */
export async function rateLetGos(monitor: Awaited<ReturnType<typeof monitorKeys>>, redis: Redis, stateKey: string): Promise<number[]> {
  await monitor.settle(redis, `let-gos-${randomUUID()}`);
  return monitor.seen
    .map((c) => c.split(' '))
    .filter(([cmd, key, field]) => cmd!.toLowerCase() === 'hset' && key === stateKey && field === 'last')
    .map((a) => Number(a[3]));
}

/**
 * Whom an endpoint's limiter let go, in the order it let them go: the member (a job's slotMember) of each take
 * script that recorded a let-go. Its EVAL or EVALSHA names the state key, the waiting key, then the member, and
 * MONITOR reports a script's own commands right after it, its HSET of `last` among them (only a let-go writes
 * `last`). The order a limit promises is checked on this, not on a receiver's arrivals: a POST arrives later
 * than its let-go by its worker's pace (rateLetGos), so two workers' POSTs a turn apart can arrive swapped.
 */
export async function rateLetGoMembers(monitor: Awaited<ReturnType<typeof monitorKeys>>, redis: Redis, stateKey: string): Promise<string[]> {
  await monitor.settle(redis, `let-go-members-${randomUUID()}`);
  const members: string[] = [];
  let taking: string | undefined;
  for (const parts of monitor.seen.map((c) => c.split(' '))) {
    const cmd = parts[0]!.toLowerCase();
    if (cmd === 'eval' || cmd === 'evalsha') {
      // EVAL's script text has spaces: the member is found from the state key, not by its position.
      const at = parts.indexOf(stateKey);
      taking = at >= 0 ? parts[at + 2] : undefined;
    } else if (cmd === 'hset' && parts[1] === stateKey && parts[2] === 'last' && taking !== undefined) {
      members.push(taking);
      taking = undefined;
    }
  }
  return members;
}

/** Consecutive let-gos (rateLetGos) at least a turn (1/perSecond s) apart, and one at least for each of the `posts` the receiver got. */
export function expectSpaced(letGos: number[], perSecond: number, posts: number): void {
  expect(letGos.length, 'a let-go for every POST').toBeGreaterThanOrEqual(posts);
  for (let i = 1; i < letGos.length; i++) expect(letGos[i]! - letGos[i - 1]!, `let-gos ${i - 1} and ${i}`).toBeGreaterThanOrEqual(1_000_000 / perSecond);
}
