/**
 * WORKFLOW_VERSIONS_RETIRED set differently on the API and on a worker (ADR 0008, *Retiring a
 * version*: it must be the same on every process). Each process can only say what its own list does,
 * so what a run or a client is told names whose configuration retires the version — never "no
 * instance runs it any more" when the API still starts runs of it. A real API and a real worker process.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, runUsers, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack, type WorkerHandle } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { retiringApi } from '../helpers/retiring-api.ts';
import { laterVersion } from '../helpers/versioned-workflows.ts';
import { GOLDEN_PATH } from '../../src/modules/golden-path/golden-path.workflow.ts';
import type { WorkflowDef } from '../../src/platform/durable/workflow.ts';

const LONG = 120_000;
const TEST_WORKER = 'test/helpers/test-worker.ts';
/** An instance of the next release: golden-path v2 in place of v1. */
const v2Only = (fromModules: WorkflowDef[]) => fromModules.map((w) => (w.name === GOLDEN_PATH ? laterVersion(w, 2) : w));

describe('WORKFLOW_VERSIONS_RETIRED on a worker but not on the API', () => {
  let stack: TestStack;
  let worker: WorkerHandle;

  beforeAll(async () => {
    // The API (this process) registers golden-path v1, its current version, and declares nothing retired.
    stack = await startStack({ env: { DATABASE_POOL_MAX: '4' } });
    // The worker registers v2 only and declares v1 retired.
    worker = await stack.spawnWorker({ GP_VERSIONS: '2', WORKFLOW_VERSIONS_RETIRED: 'golden-path@v1', DATABASE_POOL_MAX: '6', WORKER_CONCURRENCY: '2' }, { entry: TEST_WORKER });
  }, LONG);
  afterAll(async () => {
    await stack?.stop();
  });

  it('the worker says at start that the API must declare the same list', () => {
    const line = worker
      .output()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { level: number; msg: string; workflow_versions_retired?: string[] })
      .find((l) => l.workflow_versions_retired !== undefined);
    expect(line).toMatchObject({ level: 40, workflow_versions_retired: ['golden-path@v1'] });
    expect(line!.msg).toMatch(/the API must declare the same list/);
  });

  it("a run the API starts on v1 fails at the worker, its error naming v1 and the worker's configuration; the API's retry answers naming the disagreement", { timeout: LONG }, async () => {
    const tok = await runUsers(stack, newTenant());
    const submitted = await api(stack, 'POST', '/api/v1/golden-path/run', { token: tok.submitter, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
    expect(submitted.status, submitted.text).toBe(202);
    const id = submitted.json.run_id as string;
    const failed = await waitFor(
      async () => {
        const res = await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token: tok.submitter });
        return res.json?.status === 'failed' ? res.json : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 100, what: `run ${id} to fail` },
    );
    expect(failed.error).toMatchObject({ code: 'workflow_version_retired', sequence_num: 1 });
    const message = failed.error.message as string;
    // What happened: this worker's list retires v1, which the API still starts runs on.
    expect(message).toMatch(/golden-path@v1/);
    expect(message).toMatch(/this worker's configuration declares retired/);
    expect(message).toMatch(/WORKFLOW_VERSIONS_RETIRED/);
    expect(message).toMatch(/the API's WORKFLOW_VERSIONS_RETIRED and the workers' disagree/);
    // Not a claim about every process (the API runs v1), nor the worker's idea of the current version (the API decides it).
    expect(message).not.toMatch(/no instance runs it/);
    expect(message).not.toMatch(/\(v2\)/);

    // An API instance of the next release (v2 only), which does not declare v1 retired either: its 503
    // names the worker's failure and the disagreement, not a deploy in progress ("retry shortly").
    const next = await retiringApi(stack, '', v2Only);
    try {
      const res = await api(next, 'POST', `/api/v1/golden-path/runs/${id}/retry`, { token: tok.submitter, headers: { 'Idempotency-Key': randomUUID() } });
      expect(res.status, res.text).toBe(503);
      expect(res.json.code).toBe('workflow_version_unavailable');
      expect(res.json.detail).toMatch(/A worker failed the run because its configuration declares that version retired \(WORKFLOW_VERSIONS_RETIRED\)/);
      expect(res.json.detail).not.toMatch(/retry shortly/);
    } finally {
      await next.stop();
    }
    // One that declares v1 retired, as the worker does: 409 for good, naming its own configuration.
    const agreeing = await retiringApi(stack, 'golden-path@v1', v2Only);
    try {
      const res = await api(agreeing, 'POST', `/api/v1/golden-path/runs/${id}/retry`, { token: tok.submitter, headers: { 'Idempotency-Key': randomUUID() } });
      expect(res.status, res.text).toBe(409);
      expect(res.json).toMatchObject({ code: 'workflow_version_retired', workflow: GOLDEN_PATH, workflow_version: 1, current_version: 2, run_status: 'failed' });
      expect(res.json.detail).toMatch(/this instance's configuration declares retired for good \(WORKFLOW_VERSIONS_RETIRED\)/);
    } finally {
      await agreeing.stop();
    }
  });
});
