import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { api, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';

/**
 * A queue's global concurrency or global rate limit (BullMQ keeps them in the queue's meta hash:
 * `concurrency`, `max` and `duration`) caps every worker on the queue whatever WORKER_CONCURRENCY says.
 * This release's dashboard refuses to set them, but a release before it let an operator do so from Bull
 * Board, and the value is still in Redis, in force and shown nowhere. It is reported: /readyz's `queues`
 * check (never failing: the API still serves) and a gauge per queue; docs/runbook.md says how to clear it,
 * and its command, read from the runbook, is run here as an operator would.
 */
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
let stack: TestStack;
// No run of this file uses it: a cap on it holds nothing up.
const QUEUE = 'partner-offboarding';

beforeAll(async () => {
  stack = await startStack();
});
afterAll(async () => stack?.stop());

/** docs/runbook.md's command that clears a queue's global limits (A queue capped by a global limit), run for `queue`. */
async function clearAsTheRunbookSays(queue: string): Promise<void> {
  const runbook = await readFile(`${ROOT}docs/runbook.md`, 'utf8');
  const line = runbook.split('\n').find((l) => l.startsWith('node -e') && l.includes('removeGlobalConcurrency'));
  expect(line, 'the runbook command').toBeDefined();
  const script = /^node -e "(.*)" <queue>$/.exec(line!)?.[1];
  expect(script, line).toBeDefined();
  await promisify(execFile)(process.execPath, ['-e', script!, queue], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', REDIS_URL: stack.env.REDIS_URL!, QUEUE_PREFIX: stack.prefix } });
}

function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

const metric = (series: string, want: number) =>
  waitFor(async () => sample((await api(stack, 'GET', '/metrics')).text, series) === want, { timeoutMs: 30_000, what: `${series} to read ${want}` });

/** No limit set: the limit's series is absent from /metrics (0 is a limit, and BullMQ enforces it). */
const absent = (series: string) =>
  waitFor(async () => sample((await api(stack, 'GET', '/metrics')).text, series) === undefined, { timeoutMs: 30_000, what: `${series} to be absent` });

const LIMIT_SERIES = ['dealix_queue_global_concurrency', 'dealix_queue_global_rate_limit_max', 'dealix_queue_global_rate_limit_duration_seconds'];

describe("a queue's global concurrency or rate limit left in Redis", () => {
  it('is reported by /readyz (without failing it) and /metrics, and is gone from both once cleared as the runbook says', async () => {
    expect((await api(stack, 'GET', '/readyz')).json.checks.queues).toEqual({ ok: true });
    // The queue's series is there (dealix_queue_paused), its limits' are not: none is set.
    await metric(`dealix_queue_paused{queue="${QUEUE}"}`, 0);
    for (const name of LIMIT_SERIES) await absent(`${name}{queue="${QUEUE}"}`);

    // What Bull Board's "set global concurrency" and "set rate limit" wrote, through BullMQ's own API.
    const queue = stack.container.queues.get(QUEUE)!;
    await queue.setGlobalConcurrency(1);
    await queue.setGlobalRateLimit(5, 60_000);
    try {
      const ready = await api(stack, 'GET', '/readyz');
      expect(ready.status).toBe(200);
      expect(ready.json.checks.queues).toEqual({
        ok: true,
        limited: [{ queue: QUEUE, concurrency: 1, rate_limit: { max: 5, duration_ms: 60_000 } }],
        detail: expect.stringMatching(new RegExp(`${QUEUE}.*concurrency 1.*5 jobs per 60 s`)),
      });
      await metric(`dealix_queue_global_concurrency{queue="${QUEUE}"}`, 1);
      await metric(`dealix_queue_global_rate_limit_max{queue="${QUEUE}"}`, 5);
      await metric(`dealix_queue_global_rate_limit_duration_seconds{queue="${QUEUE}"}`, 60);
      expect(sample((await api(stack, 'GET', '/metrics')).text, 'dealix_queue_global_concurrency{queue="golden-path"}')).toBeUndefined();
    } finally {
      await clearAsTheRunbookSays(QUEUE);
    }
    expect(await queue.getGlobalConcurrency()).toBeNull();
    expect(await queue.getGlobalRateLimit()).toBeNull();
    expect((await api(stack, 'GET', '/readyz')).json.checks.queues).toEqual({ ok: true });
    for (const name of LIMIT_SERIES) await absent(`${name}{queue="${QUEUE}"}`);
  });

  it('a limit of 0 reads 0, apart from no limit (absent), and goes once removed through the Queue API', async () => {
    const queue = stack.container.queues.get(QUEUE)!;
    for (const name of LIMIT_SERIES) await absent(`${name}{queue="${QUEUE}"}`);
    await queue.setGlobalConcurrency(0);
    await queue.setGlobalRateLimit(0, 1000);
    try {
      // BullMQ reads both back as set (the meta hash holds "0"), and enforces them (isQueueMaxed: active >= 0).
      expect(await queue.getGlobalConcurrency()).toBe(0);
      expect(await queue.getGlobalRateLimit()).toEqual({ max: 0, duration: 1000 });
      await metric(`dealix_queue_global_concurrency{queue="${QUEUE}"}`, 0);
      await metric(`dealix_queue_global_rate_limit_max{queue="${QUEUE}"}`, 0);
      await metric(`dealix_queue_global_rate_limit_duration_seconds{queue="${QUEUE}"}`, 1);
      expect((await api(stack, 'GET', '/readyz')).json.checks.queues.limited).toEqual([{ queue: QUEUE, concurrency: 0, rate_limit: { max: 0, duration_ms: 1000 } }]);
    } finally {
      await queue.removeGlobalConcurrency();
      await queue.removeGlobalRateLimit();
    }
    for (const name of LIMIT_SERIES) await absent(`${name}{queue="${QUEUE}"}`);
  });

  it("the OpenAPI document publishes the queues check's `paused` and `limited`, as /readyz answers them", async () => {
    const doc = (await api(stack, 'GET', '/openapi.json')).json;
    const check = doc.paths['/readyz'].get.responses['200'].content['application/json'].schema.properties.checks.additionalProperties;
    expect(check.properties.paused).toEqual({ type: 'array', items: { type: 'string' } });
    expect(Object.keys(check.properties.limited.items.properties)).toEqual(['queue', 'concurrency', 'rate_limit']);
    expect(Object.keys(check.properties.limited.items.properties.rate_limit.properties)).toEqual(['max', 'duration_ms']);
  });

  it('a concurrency alone, or a rate limit alone, is reported alone; a paused queue is still named beside them', async () => {
    const queue = stack.container.queues.get(QUEUE)!;
    const other = stack.container.queues.get('golden-path')!;
    await queue.setGlobalRateLimit(1, 1000);
    await other.setGlobalConcurrency(3);
    await queue.pause();
    try {
      const checks = (await api(stack, 'GET', '/readyz')).json.checks.queues;
      expect(checks).toMatchObject({ ok: true, paused: [QUEUE] });
      expect([...checks.limited].sort((a, b) => a.queue.localeCompare(b.queue))).toEqual([
        { queue: 'golden-path', concurrency: 3 },
        { queue: QUEUE, rate_limit: { max: 1, duration_ms: 1000 } },
      ]);
      expect(checks.detail).toMatch(/paused: partner-offboarding/);
    } finally {
      await queue.resume();
      await queue.removeGlobalRateLimit();
      await other.removeGlobalConcurrency();
    }
    expect((await api(stack, 'GET', '/readyz')).json.checks.queues).toEqual({ ok: true });
  });
});
