import pg from 'pg';
import { RUN_STATUSES } from '../../src/platform/durable/durable-run.entity.ts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, CLASS_A_SUBMISSION, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack, type WorkerHandle } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { jsonLines } from '../helpers/api-process.ts';

let stack: TestStack;
let worker: WorkerHandle;
const tenant = newTenant();
let token: string;

/** The value of one Prometheus sample, e.g. sample(text, 'dealix_runs{status="completed"}'). */
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

    const res = await api(stack, 'GET', '/metrics');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/plain');
    // One run job carried the class A run through its four steps (ADR 0005).
    expect(sample(res.text, 'dealix_queue_jobs{queue="golden-path",state="completed"}')).toBe(1);
    expect(sample(res.text, 'dealix_queue_jobs{queue="golden-path",state="failed"}')).toBe(0);
    expect(sample(res.text, 'dealix_queue_jobs{queue="maintenance",state="delayed"}')).toBeGreaterThanOrEqual(0);
    expect(sample(res.text, 'dealix_runs{status="completed"}')).toBe(1);
    // When that reading was made: an alert can tell a stale reading (a backing service down) from a quiet system.
    expect(Math.abs(sample(res.text, 'dealix_metrics_last_read_timestamp_seconds')! - Date.now() / 1000)).toBeLessThan(60);
    // Every status is a series, 0 when no run has it (a vanished series reads as "no data", not 0).
    for (const status of RUN_STATUSES.filter((st) => st !== 'completed')) expect(sample(res.text, `dealix_runs{status="${status}"}`), status).toBe(0);
    // Every registered workflow version is a series of active runs, 0 when none (ADR 0008).
    expect(sample(res.text, 'dealix_active_runs{workflow="golden-path",version="1",registered="true"}')).toBe(0);
    expect(sample(res.text, 'dealix_idempotency_replays_total')).toBe(1);
    expect(sample(res.text, 'dealix_idempotency_conflicts_total{reason="mismatch"}')).toBe(1);
    expect(res.text).toContain('# TYPE dealix_step_duration_seconds histogram');

    const line = await waitFor(() => jsonLines(worker.output()).find((l) => l.msg === 'worker metrics listening'), { what: 'the worker metrics port' });
    const text = await (await fetch(`http://127.0.0.1:${line.metrics_port}/metrics`)).text();
    for (const step of stack.container.runtime.workflow('golden-path').steps) {
      expect(sample(text, `dealix_step_duration_seconds_count{step="${step.name}",replayed="false"}`)).toBe(1);
      expect(sample(text, `dealix_step_duration_seconds_bucket{le="+Inf",step="${step.name}",replayed="false"}`)).toBe(1);
    }
    // Group commit (ADR 0007): the worker's four step transactions went through it (one run at a time: each alone).
    expect(sample(text, 'dealix_db_group_commit_transactions_total')).toBeGreaterThanOrEqual(4);
    expect(sample(text, 'dealix_db_group_commit_failed_groups_total')).toBe(0);
    expect(text).toContain('# TYPE dealix_db_group_commit_groups_total counter');
  });
  it('many scrapes at once share one reading of the runs: the public endpoint costs the database one query per interval', async () => {
    let counted = 0;
    const original = pg.Client.prototype.query;
    pg.Client.prototype.query = function (this: pg.Client, config: any, ...rest: any[]) {
      const text = typeof config === 'string' ? config : String(config?.text ?? '');
      if (text.includes('from durable_runs group by status')) counted++;
      return (original as any).call(this, config, ...rest);
    } as any;
    try {
      const scrapes = await Promise.all(Array.from({ length: 20 }, () => api(stack, 'GET', '/metrics')));
      expect(scrapes.every((r) => r.status === 200 && r.text.includes('dealix_runs{status="completed"}'))).toBe(true);
    } finally {
      pg.Client.prototype.query = original;
    }
    expect(counted).toBeLessThanOrEqual(1);
  });
});
