import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { api, CLASS_A_SUBMISSION, newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor, within } from '../helpers/poll.ts';
import { freePort } from '../helpers/own-infra.ts';
import { holdTable } from '../helpers/table-lock.ts';
import { countBlockedBy } from '../helpers/lock-graph.ts';

/** On a redis-server of this test alone (never the shared one): it is stopped and started again here. */
let stack: TestStack;

beforeAll(async () => {
  stack = await startStack({ ownRedis: true });
});
afterAll(async () => stack?.stop());

describe('health and readiness', () => {
  it('is live and ready when PostgreSQL, Redis and the migrations are in order', async () => {
    expect((await api(stack, 'GET', '/healthz')).json).toEqual({ status: 'ok' });
    const ready = await api(stack, 'GET', '/readyz');
    expect(ready.status).toBe(200);
    expect(ready.json).toEqual({ status: 'ready', checks: { postgres: { ok: true }, redis: { ok: true }, migrations: { ok: true }, token_revocations: { ok: true }, queues: { ok: true } } });
  });

  it('reports a paused queue (its runs wait) without failing readiness: the API still serves', async () => {
    // A paused queue (Bull Board's pause, queue.pause()) stalls every run on it while every other check
    // passes; the load balancer must keep routing (submissions, reads and cancels still work), so the
    // probe names it and stays 200.
    const queue = stack.container.queues.get('golden-path')!;
    await queue.pause();
    try {
      const ready = await api(stack, 'GET', '/readyz');
      expect(ready.status).toBe(200);
      expect(ready.json.checks.queues).toEqual({ ok: true, paused: ['golden-path'], detail: expect.stringContaining('golden-path') });
    } finally {
      await queue.resume();
    }
    expect((await api(stack, 'GET', '/readyz')).json.checks.queues).toEqual({ ok: true });
  });

  it('answers 503 naming Redis while Redis is stopped, stays live, and is ready again once Redis is back', async () => {
    await stack.ownRedis!.stopServer();
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

    await stack.ownRedis!.startServer();
    await waitFor(async () => (await api(stack, 'GET', '/readyz')).status === 200, { timeoutMs: 30_000, what: 'readiness to recover' });
  });

  it('answers 503 naming the migrations while one is pending, and is ready again once it is applied', async () => {
    // The database as if the newest migration had not run yet: its row leaves the migrations table (as the owner).
    const { rows } = await stack.db.owner('delete from mikro_orm_migrations where id = (select max(id) from mikro_orm_migrations) returning *');
    expect(rows).toHaveLength(1);
    try {
      const pending = await api(stack, 'GET', '/readyz');
      expect(pending.status).toBe(503);
      expect(pending.headers.get('content-type')).toContain('application/problem+json');
      expect(pending.json).toMatchObject({ status: 503, code: 'not_ready', checks: { migrations: { ok: false, detail: '1 pending' }, postgres: { ok: true }, redis: { ok: true } } });
      expect(pending.json.detail).toBe('Not ready: migrations (1 pending)');
      expect((await api(stack, 'GET', '/healthz')).status).toBe(200);
    } finally {
      const row = rows[0];
      await stack.db.owner('insert into mikro_orm_migrations (id, name, executed_at) values ($1, $2, $3)', [row.id, row.name, row.executed_at]);
    }
    expect((await api(stack, 'GET', '/readyz')).status).toBe(200);
  });

  it('probes of a slow database share one check: they never hold the pool, and tenants are still served', { timeout: 60_000 }, async () => {
    // /readyz is public and never shed. Its checks used to run per probe, and a probe that gave up
    // (its timeout) left its statement running on a pool connection: while the database was slow —
    // here the migrations table is locked, so the migrations check waits — a handful of anonymous
    // probes held every connection of the pool, and tenants' requests failed with 503.
    const token = await stack.token({ tenantId: newTenant(), sub: 'health-tenant' });
    const lock = await holdTable(stack.db.ownerUrl, 'mikro_orm_migrations', 'access exclusive');
    try {
      const probes = await Promise.all(Array.from({ length: Number(stack.env.DATABASE_POOL_MAX) + 3 }, () => api(stack, 'GET', '/readyz')));
      for (const p of probes) expect(p.json).toMatchObject({ status: 503, code: 'not_ready', checks: { postgres: { ok: true }, migrations: { ok: false } } });
      // One statement of all those probes waits for the table; the pool has room for a tenant.
      // Counted by the lock graph in this database: pg_locks by the table's name also counted another test
      // file's waiters (its database a clone of the same template, its migrations table the same oid).
      expect(await countBlockedBy(stack.db.admin, lock.pid)).toBe(1);
      const runs = await api(stack, 'GET', '/api/v1/golden-path/runs', { token });
      expect(runs.status, runs.text).toBe(200);
    } finally {
      await lock.close();
    }
    await waitFor(async () => (await api(stack, 'GET', '/readyz')).status === 200, { timeoutMs: 30_000, what: 'readiness once the table is free' });
  });
});

describe('Redis up but unable to serve', () => {
  /** Puts the private Redis into a state where it answers error replies; the function returned takes it out again. */
  type Fault = () => Promise<() => Promise<void>>;
  // Redis answers other clients BUSY while a script runs past busy-reply-threshold.
  const busy: Fault = async () => {
    const own = stack.ownRedis!;
    await own.client.config('SET', 'busy-reply-threshold', '10');
    const blocker = new Redis(own.url, { maxRetriesPerRequest: 1 });
    blocker.on('error', () => {});
    // Ends (rejected: "Script killed by user") once SCRIPT KILL stops it.
    const script = blocker.eval('while true do end', 0).then(() => undefined, () => undefined);
    await waitFor(async () => own.client.ping().then(() => false, (e: Error) => /^BUSY /.test(e.message)), { timeoutMs: 15_000, what: 'Redis to answer BUSY' });
    return async () => {
      await waitFor(async () => (await own.client.call('SCRIPT', 'KILL').catch((e: Error) => (/NOTBUSY/.test(e.message) ? 'OK' : undefined))) === 'OK', { timeoutMs: 15_000, what: 'SCRIPT KILL' });
      await within(script, 'the killed script to end', 15_000);
      blocker.disconnect();
      await own.client.config('SET', 'busy-reply-threshold', '5000');
    };
  };
  // Full under noeviction (BullMQ's policy): every write is refused with OOM.
  const full: Fault = async () => {
    const own = stack.ownRedis!;
    await own.client.config('SET', 'maxmemory', '1');
    return async () => void (await own.client.config('SET', 'maxmemory', '0'));
  };

  // As Redis answers LOADING after a restart and READONLY after a failover: it cannot serve now, the
  // request is fine. The submission's rate-limit counter is its first Redis command.
  it.each([
    ['BUSY (a script running)', busy],
    ['OOM (maxmemory reached)', full],
  ] as const)('while Redis answers %s a submission is answered 503 with Retry-After, not 500, and accepted afterwards', { timeout: 60_000 }, async (_, fault) => {
    const token = await stack.token({ tenantId: newTenant(), sub: 'unable-submitter' });
    const submit = () => api(stack, 'POST', '/api/v1/golden-path/run', { token, body: CLASS_A_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
    const leave = await fault();
    try {
      const res = await submit();
      expect(res.status, res.text).toBe(503);
      expect(res.headers.get('content-type')).toContain('application/problem+json');
      expect(res.json).toMatchObject({ status: 503, code: 'service_unavailable' });
      expect(res.headers.get('retry-after')).toBeTruthy();
      // Public: Redis's own reply stays in the log.
      expect(res.text).not.toMatch(/BUSY|OOM|script|maxmemory/i);
    } finally {
      await leave();
    }
    const accepted = await waitFor(async () => {
      const r = await submit();
      return r.status === 202 ? r : undefined;
    }, { timeoutMs: 30_000, what: 'the API to accept the submission again' });
    expect(accepted.json.run_id).toBeTruthy();
  });
});

describe('readiness without PostgreSQL', () => {
  let dead: TestStack;
  beforeAll(async () => {
    // The application's database on a port where nothing listens; Redis is the shared one and answers.
    dead = await startStack({ env: { DATABASE_URL: `postgres://dealix_app:dealix_app@127.0.0.1:${await freePort()}/dealix` } });
  });
  afterAll(async () => dead?.stop());

  it('answers 503 naming PostgreSQL while it is unreachable, without saying where it was looked for', async () => {
    // Redis answers once its connection is up (a ping before that fails fast): then only PostgreSQL is missing.
    const down = await waitFor(async () => {
      const r = await api(dead, 'GET', '/readyz');
      return r.json?.checks?.redis?.ok ? r : undefined;
    }, { timeoutMs: 30_000, what: 'the Redis check to pass' });
    expect(down.status).toBe(503);
    expect(down.headers.get('content-type')).toContain('application/problem+json');
    expect(down.json).toMatchObject({ status: 503, code: 'not_ready', checks: { postgres: { ok: false, detail: 'unreachable or too slow' }, redis: { ok: true }, migrations: { ok: false } } });
    expect(down.json.detail).toMatch(/^Not ready: postgres \(unreachable or too slow\); /);
    expect(down.text).not.toMatch(/127\.0\.0\.1|ECONNREFUSED|dealix_app|:\d{4,5}\b/);
    expect((await api(dead, 'GET', '/healthz')).status).toBe(200);
  });
});
