import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { createLogger } from '../../src/platform/telemetry/logger.ts';
import { createRedis } from '../../src/platform/queue/connections.ts';
import { createOrm } from '../../src/platform/db/orm.ts';
import { parseConfig } from '../../src/platform/config/config.ts';
import { entities } from '../../src/entities.ts';
import { CONNECTION_BUDGET_WARNING, ConnectionBudget, connectionLimit, declarePool, livePools, type ConnectionLimit, type PoolDeclaration } from '../../src/platform/db/connection-budget.ts';
import { liveConnectionBudgetRow } from '../../src/readiness/connection-budget.checks.ts';
import { spawnApi, jsonLines, type ApiProcess } from '../helpers/api-process.ts';
import { capturedLog } from '../helpers/log-capture.ts';
import { waitFor, within } from '../helpers/poll.ts';
import { startStack, type TestStack } from '../helpers/stack.ts';

/**
 * The connection budget (src/platform/db/connection-budget.ts; docs/runbook.md, *Connection budget*):
 * API and worker processes declare their pools under QUEUE_PREFIX, and one whose live processes' pools
 * add up past what the real PostgreSQL lets the application open (max_connections less its reserved
 * slots, read here as the application role) warns once, with the numbers. The pools open lazily, so the
 * sizes declared here (DATABASE_POOL_MAX) cost the shared server no connection.
 */
let stack: TestStack;
let limit: ConnectionLimit;
let api: ApiProcess | undefined;

beforeAll(async () => {
  stack = await startStack({ api: false });
  limit = await connectionLimit(stack.container.orm);
});
afterAll(async () => {
  await api?.stop('SIGKILL');
  await stack?.stop();
});

const warnings = (lines: Array<Record<string, any>>) => lines.filter((l) => l.msg === CONNECTION_BUDGET_WARNING);

describe('processes that declare their pools', () => {
  it('the processes over the limit warn with the numbers; the readiness row fails; a clean stop withdraws the pool at once', { timeout: 300_000 }, async () => {
    // An API of 10 and workers of W each: the k-th worker takes the sum past the limit, the one before did not.
    const apiPool = 10;
    const workerPool = Math.min(200, Math.floor((limit.usable - apiPool) / 2) + 1);
    const k = Math.floor((limit.usable - apiPool) / workerPool) + 1;
    expect(apiPool + (k - 1) * workerPool).toBeLessThanOrEqual(limit.usable);
    const total = apiPool + k * workerPool;
    expect(total).toBeGreaterThan(limit.usable);

    api = await spawnApi({ ...stack.env, DATABASE_POOL_MAX: String(apiPool), API_MAX_DB_CONNECTIONS_PER_TENANT: '5' });
    const workers = [];
    for (let i = 0; i < k; i++) workers.push(await stack.spawnWorker({ DATABASE_POOL_MAX: String(workerPool) }));
    const last = workers.at(-1)!;

    // The last worker at its start (once declared); the API at its next heartbeat.
    const fields = { declared_connections: total, usable_connections: limit.usable, processes: k + 1, max_connections: limit.maxConnections, superuser_reserved_connections: limit.superuserReserved };
    const pools = [
      { service: 'api', pool: apiPool, processes: 1, connections: apiPool },
      { service: 'worker', pool: workerPool, processes: k, connections: k * workerPool },
    ];
    const warned = await waitFor(() => warnings(jsonLines(last.output()))[0], { timeoutMs: 60_000, what: "the last worker's budget warning" });
    expect(warned).toMatchObject({ level: 40, ...fields, pools, pools_text: `api 1×${apiPool}, worker ${k}×${workerPool}` });
    expect(await waitFor(() => warnings(api!.lines())[0], { timeoutMs: 60_000, what: "the API's budget warning (its next heartbeat)" })).toMatchObject({ ...fields, pools });
    // None before the sum went past it: the workers before the last had started within it.
    for (const w of workers.slice(0, -1)) expect(warnings(jsonLines(w.output())).every((l) => l.declared_connections === total)).toBe(true);

    const over = await liveConnectionBudgetRow(stack.container.orm, stack.container.redis, stack.prefix);
    expect(over.status).toBe('FAIL');
    expect(over.reason).toContain(`${k + 1} process(es) pool up to ${total} connections (api 1×${apiPool}, worker ${k}×${workerPool}), more than the ${limit.usable} PostgreSQL lets the application open (max_connections ${limit.maxConnections} − ${limit.superuserReserved} superuser_reserved_connections)`);
    expect(over.reason).toMatch(/53300.*PgBouncer.*WORKER_QUEUES.*WORKER_CONCURRENCY=8.*DATABASE_POOL_MAX.*max_connections/);

    // SIGTERM: a clean stop withdraws its declaration before it exits, without waiting for its expiry.
    last.kill('SIGTERM');
    expect(await within(last.exited, 'the last worker to exit', 60_000)).toBe(0);
    const live = await livePools(stack.container.redis, stack.prefix);
    expect(live.map((d) => d.service).sort()).toEqual(['api', ...Array(k - 1).fill('worker')]);
    const within_ = await liveConnectionBudgetRow(stack.container.orm, stack.container.redis, stack.prefix);
    expect(within_).toMatchObject({ status: 'PASS', reason: expect.stringContaining(`${k} process(es) pool up to ${apiPool + (k - 1) * workerPool} connections`) });
  });
});

describe('in-process declarations', () => {
  const budgetOf = (prefix: string, declaration: PoolDeclaration, opts: { heartbeatMs?: number; expiryMs?: number } = {}) => {
    const log = capturedLog();
    const logger = createLogger({ level: 'debug', name: 'budget-test', destination: log.destination });
    const budget = new ConnectionBudget({ redis: stack.container.redis, orm: stack.container.orm, prefix, logger, declaration, heartbeatMs: opts.heartbeatMs ?? 3_600_000, ...(opts.expiryMs ? { expiryMs: opts.expiryMs } : {}) });
    /** Its warnings so far: a marker logged after them is waited for, so none still on its way is missed. */
    const warned = async () => {
      const marker = randomBytes(4).toString('hex');
      logger.info({ marker }, 'marker');
      await waitFor(() => log.lines.some((l) => l.marker === marker), { what: 'the marker line' });
      return warnings(log.lines);
    };
    return { budget, warned, log };
  };

  it('one warning per sum and limit, not one per heartbeat; again when the sum changes, and after it was back within', async () => {
    const prefix = `${stack.prefix}:same`;
    const big = budgetOf(prefix, { service: 'api', instance: 'big', pool: limit.usable - 5 });
    const small = budgetOf(prefix, { service: 'worker', instance: 'small', pool: 10 });
    const extra = budgetOf(prefix, { service: 'worker', instance: 'extra', pool: 10 });
    try {
      await big.budget.beat();
      expect(await big.warned()).toEqual([]);
      await small.budget.beat();
      await small.budget.beat();
      await small.budget.beat();
      let said = await small.warned();
      expect(said).toHaveLength(1);
      expect(said[0]).toMatchObject({ declared_connections: limit.usable + 5, usable_connections: limit.usable, processes: 2 });
      // Another process: the sum changed, said again (once).
      await extra.budget.beat();
      await small.budget.beat();
      await small.budget.beat();
      said = await small.warned();
      expect(said.map((l) => l.declared_connections)).toEqual([limit.usable + 5, limit.usable + 15]);
      // Back within (two stopped cleanly), then over again: warned again, though the sum is one it warned of before.
      await extra.budget.stop();
      await big.budget.stop();
      await small.budget.beat();
      const back = budgetOf(prefix, { service: 'api', instance: 'big-again', pool: limit.usable - 5 });
      await back.budget.beat();
      await small.budget.beat();
      expect((await small.warned()).map((l) => l.declared_connections)).toEqual([limit.usable + 5, limit.usable + 15, limit.usable + 5]);
      await back.budget.stop();
    } finally {
      await Promise.all([big, small, extra].map((b) => b.budget.stop()));
    }
  });

  it('a process whose heartbeat stopped drops out after its expiry; one that beats stays', async () => {
    const prefix = `${stack.prefix}:lapse`;
    // Declared once and never again: a process SIGKILLed after its first beat.
    await declarePool(stack.container.redis, prefix, { service: 'worker', instance: 'killed', pool: 7 }, 1_500);
    const alive = budgetOf(prefix, { service: 'worker', instance: 'alive', pool: 9 }, { heartbeatMs: 200, expiryMs: 1_500 });
    alive.budget.start();
    try {
      await waitFor(async () => (await livePools(stack.container.redis, prefix)).length === 2, { what: 'both declarations' });
      const after = await waitFor(
        async () => {
          const live = await livePools(stack.container.redis, prefix);
          return live.some((d) => d.instance === 'killed') ? undefined : live;
        },
        { timeoutMs: 30_000, what: "the killed process's declaration to lapse" },
      );
      expect(after).toEqual([{ service: 'worker', instance: 'alive', pool: 9 }]);
    } finally {
      await alive.budget.stop();
    }
    expect(await livePools(stack.container.redis, prefix)).toEqual([]);
  });

  it('Redis down: the beat is skipped quietly (a debug line), never thrown, nothing warned', async () => {
    const down = createRedis('redis://127.0.0.1:1', 'producer', 'budget-test-down');
    const log = capturedLog();
    const logger = createLogger({ level: 'debug', name: 'budget-test', destination: log.destination });
    const budget = new ConnectionBudget({ redis: down, orm: stack.container.orm, prefix: `${stack.prefix}:down`, logger, declaration: { service: 'worker', instance: 'x', pool: limit.usable + 1 } });
    try {
      await budget.beat();
      await waitFor(() => log.lines.some((l) => l.msg?.startsWith('connection budget not checked this time')), { what: 'the debug line' });
      expect(log.lines.filter((l) => l.level >= 40)).toEqual([]);
    } finally {
      await budget.stop();
      down.disconnect();
    }
  });

  it('PostgreSQL not answering (nothing listens where it points): the beat is skipped quietly, the declaration still made', async () => {
    const prefix = `${stack.prefix}:pgdown`;
    const closed = await createOrm(parseConfig({ ...stack.env, DATABASE_URL: 'postgres://dealix_app:dealix_app@127.0.0.1:1/nothing' }), { entities, poolMax: 1 });
    const log = capturedLog();
    const logger = createLogger({ level: 'debug', name: 'budget-test', destination: log.destination });
    const budget = new ConnectionBudget({ redis: stack.container.redis, orm: closed, prefix, logger, declaration: { service: 'api', instance: 'y', pool: limit.usable + 1 } });
    try {
      await budget.beat();
      await waitFor(() => log.lines.some((l) => l.msg?.startsWith('connection budget not checked this time')), { what: 'the debug line' });
      expect(log.lines.filter((l) => l.level >= 40)).toEqual([]);
      expect(await livePools(stack.container.redis, prefix)).toEqual([{ service: 'api', instance: 'y', pool: limit.usable + 1 }]);
    } finally {
      await budget.stop();
      await closed.close(true);
    }
    expect(await livePools(stack.container.redis, prefix)).toEqual([]);
  });
});

describe('the readiness row', () => {
  it('no process declared: PASS saying so; within: PASS with the sum', async () => {
    const prefix = `${stack.prefix}:rdy`;
    expect(await liveConnectionBudgetRow(stack.container.orm, stack.container.redis, prefix)).toMatchObject({
      component: 'connection-budget',
      status: 'PASS',
      reason: expect.stringMatching(new RegExp(`^no API or worker process declares its pool under QUEUE_PREFIX ${prefix} now`)),
    });
    await declarePool(stack.container.redis, prefix, { service: 'worker', instance: 'w', pool: 3 }, 60_000);
    expect(await liveConnectionBudgetRow(stack.container.orm, stack.container.redis, prefix)).toMatchObject({
      status: 'PASS',
      reason: expect.stringMatching(new RegExp(`^1 process\\(es\\) pool up to 3 connections \\(worker 1×3\\), within the ${limit.usable} PostgreSQL`)),
    });
  });
});
