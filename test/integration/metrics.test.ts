import pg from 'pg';
import { RUN_STATUSES } from '../../src/platform/durable/durable-run.entity.ts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, CLASS_A_SUBMISSION, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack, type WorkerHandle } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { METRICS_REFRESH_MS } from '../../src/platform/http/metrics.route.ts';
import { jsonLines } from '../helpers/api-process.ts';
import { GOLDEN_PATH_QUEUE } from '../../src/modules/golden-path/golden-path.workflow.ts';

let stack: TestStack;
let worker: WorkerHandle;
const tenant = newTenant();
let token: string;

/** When the queue depths and run counts were last read (dealix_metrics_last_read_timestamp_seconds). */
function lastReadOf(text: string): number {
  const t = sample(text, 'dealix_metrics_last_read_timestamp_seconds');
  if (t === undefined || !Number.isFinite(t)) throw new Error('no dealix_metrics_last_read_timestamp_seconds sample');
  return t;
}

/** The value of one Prometheus sample, e.g. sample(text, 'dealix_runs{workflow="golden-path",status="completed"}'). */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

beforeAll(async () => {
  stack = await startStack();
  worker = await stack.spawnWorker({ WORKER_METRICS_PORT: '0' });
  token = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
});
afterAll(async () => stack?.stop());

describe('Prometheus metrics', () => {
  it('/metrics shows queue depth by state, runs by status, idempotency replays and conflicts; workers show step durations', async () => {
    const key = randomUUID();
    const post = (body: unknown) => api(stack, 'POST', '/api/v1/golden-path/run', { token, body, headers: { 'Idempotency-Key': key } });
    const first = await post(CLASS_A_SUBMISSION);
    expect(first.status).toBe(202);
    expect((await post(CLASS_A_SUBMISSION)).headers.get('idempotent-replayed')).toBe('true');
    expect((await post(SAMPLE_SUBMISSION)).status).toBe(422);
    await waitFor(async () => (await api(stack, 'GET', `/api/v1/golden-path/runs/${first.json.run_id}`, { token })).json?.status === 'completed', {
      timeoutMs: 60_000,
      what: 'the run to complete',
    });
    // The run reads completed once its last step commits; its job moves to completed in Redis only after
    // that, when the worker's execution returns (having recorded the last step's duration). On a loaded
    // machine the first scrape, which is also the reading the next 5 s of scrapes get, saw it still active.
    const runQueue = stack.container.queues.get(GOLDEN_PATH_QUEUE)!;
    await waitFor(async () => (await runQueue.getJobCounts('completed')).completed === 1, { what: 'the run job to complete in Redis' });

    const res = await api(stack, 'GET', '/metrics');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/plain');
    // One run job carried the class A run through its four steps (ADR 0005).
    expect(sample(res.text, 'dealix_queue_jobs{queue="golden-path",state="completed"}')).toBe(1);
    expect(sample(res.text, 'dealix_queue_jobs{queue="golden-path",state="failed"}')).toBe(0);
    expect(sample(res.text, 'dealix_queue_jobs{queue="maintenance",state="delayed"}')).toBeGreaterThanOrEqual(0);
    expect(sample(res.text, 'dealix_runs{workflow="golden-path",status="completed"}')).toBe(1);
    // When that reading was made: an alert can tell a stale reading (a backing service down) from a quiet system.
    expect(Math.abs(sample(res.text, 'dealix_metrics_last_read_timestamp_seconds')! - Date.now() / 1000)).toBeLessThan(60);
    // Every status is a series, 0 when no run has it (a vanished series reads as "no data", not 0).
    for (const status of RUN_STATUSES.filter((st) => st !== 'completed')) expect(sample(res.text, `dealix_runs{workflow="golden-path",status="${status}"}`), status).toBe(0);
    // Per workflow: another registered workflow has its own series, 0 while it has no run.
    for (const status of RUN_STATUSES) expect(sample(res.text, `dealix_runs{workflow="partner-offboarding",status="${status}"}`), status).toBe(0);
    // Every registered workflow version is a series of active runs, 0 when none (ADR 0008).
    expect(sample(res.text, 'dealix_active_runs{workflow="golden-path",version="1",registered="true"}')).toBe(0);
    expect(sample(res.text, 'dealix_idempotency_replays_total')).toBe(1);
    expect(sample(res.text, 'dealix_idempotency_conflicts_total{reason="mismatch"}')).toBe(1);
    // Each process type exposes only what it can move (METRIC_OWNERS): no worker-only series on the API, at 0 forever.
    for (const workerOnly of ['dealix_step_duration_seconds', 'dealix_sla_timers_spent_total', 'dealix_webhook_deliveries_parked_total']) expect(res.text).not.toContain(`# TYPE ${workerOnly} `);

    const line = await waitFor(() => jsonLines(worker.output()).find((l) => l.msg === 'worker metrics listening'), { what: 'the worker metrics port' });
    const text = await (await fetch(`http://127.0.0.1:${line.metrics_port}/metrics`)).text();
    for (const step of stack.container.runtime.workflow('golden-path').steps) {
      expect(sample(text, `dealix_step_duration_seconds_count{workflow="golden-path",step="${step.name}",replayed="false"}`)).toBe(1);
      expect(sample(text, `dealix_step_duration_seconds_bucket{le="+Inf",workflow="golden-path",step="${step.name}",replayed="false"}`)).toBe(1);
    }
    // Group commit (ADR 0007): the worker's four step transactions went through it (one run at a time: each alone).
    expect(sample(text, 'dealix_db_group_commit_transactions_total')).toBeGreaterThanOrEqual(4);
    expect(sample(text, 'dealix_db_group_commit_failed_groups_total')).toBe(0);
    expect(text).toContain('# TYPE dealix_db_group_commit_groups_total counter');
    // No API-only series on a worker: its last reading (never set here) answered 0 and tripped the staleness alert on every worker target.
    for (const apiOnly of ['dealix_metrics_last_read_timestamp_seconds', 'dealix_queue_jobs', 'dealix_idempotency_replays_total', 'dealix_webhook_test_events_total']) expect(text).not.toContain(`# TYPE ${apiOnly} `);
  });
  it("the worker's metrics port answers methods as the API's operational endpoints: HEAD 200 without a body, OPTIONS 204, another method 405, each with Allow; another path 404", async () => {
    const line = await waitFor(() => jsonLines(worker.output()).find((l) => l.msg === 'worker metrics listening'), { what: 'the worker metrics port' });
    const url = `http://127.0.0.1:${line.metrics_port}`;
    const call = async (method: string, path = '/metrics') => {
      const res = await fetch(`${url}${path}`, { method, signal: AbortSignal.timeout(30_000) });
      return { status: res.status, allow: res.headers.get('allow'), type: res.headers.get('content-type'), body: await res.text() };
    };
    const head = await call('HEAD');
    expect(head).toMatchObject({ status: 200, body: '' });
    expect(head.type).toContain('text/plain');
    expect(await call('OPTIONS')).toMatchObject({ status: 204, allow: 'GET, HEAD', body: '' });
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH']) expect(await call(method), method).toMatchObject({ status: 405, allow: 'GET, HEAD' });
    expect((await call('GET', '/metrics?x=1')).status).toBe(200);
    expect(await call('GET', '/nope')).toMatchObject({ status: 404, allow: null });
    expect((await call('POST', '/nope')).status).toBe(404);
  });
  it('many scrapes at once share one reading of the runs: the public endpoint costs the database one query per interval', async () => {
    // The last reading (the scrapes before made it, or this one does), then no scrape until it is
    // older than the refresh interval: the next scrape must read again, and only one of them may.
    const lastRead = lastReadOf((await api(stack, 'GET', '/metrics')).text);
    await waitFor(() => Date.now() > lastRead * 1000 + METRICS_REFRESH_MS, { timeoutMs: METRICS_REFRESH_MS + 10_000, what: 'the reading to be due' });
    let counted = 0;
    const original = pg.Client.prototype.query;
    pg.Client.prototype.query = function (this: pg.Client, config: any, ...rest: any[]) {
      const text = typeof config === 'string' ? config : String(config?.text ?? '');
      if (text.includes('from durable_runs group by status')) counted++;
      return (original as any).call(this, config, ...rest);
    } as any;
    let scrapes: Awaited<ReturnType<typeof api>>[];
    try {
      scrapes = await Promise.all(Array.from({ length: 20 }, () => api(stack, 'GET', '/metrics')));
    } finally {
      pg.Client.prototype.query = original;
    }
    expect(scrapes.map((r) => r.status)).toEqual(scrapes.map(() => 200));
    expect(counted).toBe(1);
    // One reading, made now: every scrape shows the same new timestamp.
    const stamps = new Set(scrapes.map((r) => lastReadOf(r.text)));
    expect(stamps.size).toBe(1);
    expect([...stamps][0]).toBeGreaterThan(lastRead);
  });
});

describe('Prometheus metrics while Redis is down (own redis-server)', () => {
  let own: TestStack;
  beforeAll(async () => {
    own = await startStack({ ownRedis: true });
  });
  afterAll(async () => own?.stop());

  it('a scrape still answers, with the last reading and its unchanged timestamp; once Redis is back the reading moves on', async () => {
    const first = await api(own, 'GET', '/metrics');
    expect(first.status).toBe(200);
    const readAt = lastReadOf(first.text);
    const queued = sample(first.text, 'dealix_queue_jobs{queue="golden-path",state="completed"}');
    expect(queued).toBe(0);
    await own.ownRedis!.stopServer();
    // Past the refresh interval, so the next scrape tries to read (and cannot).
    await waitFor(() => Date.now() > readAt * 1000 + METRICS_REFRESH_MS, { timeoutMs: METRICS_REFRESH_MS + 10_000, what: 'the reading to be due' });
    const stale = await api(own, 'GET', '/metrics');
    expect(stale.status).toBe(200);
    expect(lastReadOf(stale.text)).toBe(readAt);
    expect(sample(stale.text, 'dealix_queue_jobs{queue="golden-path",state="completed"}')).toBe(queued);

    await own.ownRedis!.startServer();
    const moved = await waitFor(async () => {
      const t = lastReadOf((await api(own, 'GET', '/metrics')).text);
      return t > readAt ? t : undefined;
    }, { timeoutMs: 30_000, what: 'a new reading once Redis is back' });
    expect(moved).toBeGreaterThan(readAt);
  });
});

describe('a paused queue', () => {
  it('/metrics shows whether each queue is paused (a paused queue stalls its runs while every check passes)', async () => {
    // partner-offboarding: no run of this file uses it, so pausing it holds nothing up.
    const queue = stack.container.queues.get('partner-offboarding')!;
    const paused = async (want: number) =>
      waitFor(async () => sample((await api(stack, 'GET', '/metrics')).text, 'dealix_queue_paused{queue="partner-offboarding"}') === want, {
        timeoutMs: 30_000,
        what: `dealix_queue_paused to read ${want}`,
      });
    await paused(0);
    expect(sample((await api(stack, 'GET', '/metrics')).text, 'dealix_queue_paused{queue="golden-path"}')).toBe(0);
    await queue.pause();
    try {
      await paused(1);
    } finally {
      await queue.resume();
    }
    await paused(0);
  });
});
