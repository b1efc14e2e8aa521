import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, CLASS_A_SUBMISSION, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';

let stack: TestStack;
const tenant = newTenant();
let submitter: string;
let approver: string;

async function submit(body: unknown, key = randomUUID()) {
  return api(stack, 'POST', '/api/v1/golden-path/run', { token: submitter, body, headers: { 'Idempotency-Key': key } });
}
async function runOf(id: string, token = submitter) {
  return (await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token })).json;
}
async function waitStatus(id: string, statuses: string[]) {
  return waitFor(async () => {
    const r = await runOf(id);
    return statuses.includes(r?.status) ? r : undefined;
  }, { what: `run ${id} to reach ${statuses.join('|')}` });
}

beforeAll(async () => {
  stack = await startStack();
  await stack.spawnWorker();
  submitter = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
  approver = await stack.token({ tenantId: tenant, sub: 'approver-1', roles: ['approver'] });
});
afterAll(async () => stack?.stop());

describe('golden path over HTTP', () => {
  it('class A is approved by the system and completes with a verifiable evidence pack', async () => {
    const res = await submit(CLASS_A_SUBMISSION);
    expect(res.status).toBe(202);
    expect(res.json.correlation_id).toBe(res.headers.get('x-correlation-id'));
    const run = await waitStatus(res.json.run_id, ['completed', 'failed']);
    expect(run.status).toBe('completed');
    expect(run.steps.map((s: any) => s.status)).toEqual(['completed', 'completed', 'completed', 'completed']);
    expect(run.steps[2].output.approval_class).toBe('A');
    const verify = await api(stack, 'GET', run.links.verify, { token: submitter });
    expect(verify.json.valid).toBe(true);
  });

  it('class B waits for an approver and completes after approval', async () => {
    const res = await submit(SAMPLE_SUBMISSION);
    const waiting = await waitStatus(res.json.run_id, ['waiting']);
    expect(waiting.steps[2].status).toBe('waiting');
    const approvalId = waiting.steps[2].output.approval_request_id;
    const d = await api(stack, 'POST', `/api/v1/approvals/${approvalId}/decision`, {
      token: approver,
      body: { decision: 'approve', comment: 'fine' },
      headers: { 'Idempotency-Key': randomUUID() },
    });
    expect(d.status).toBe(200);
    const done = await waitStatus(res.json.run_id, ['completed']);
    expect(done.steps[3].output.outcome).toBe('approved');
  });
});
