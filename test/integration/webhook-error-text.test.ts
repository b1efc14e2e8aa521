/**
 * An attempt's error text is the receiver's side's words (a resolver's answer, a TLS certificate's names, a
 * parser's complaint): a NUL in it made the attempt impossible to record — PostgreSQL refuses \0 in text
 * (22021) and \u0000 in jsonb (22P05) — so the delivery was POSTed again and again, never counted (ADR 0013,
 * *Attempt error text*). The production handler against the real stack (PostgreSQL as the application role),
 * its resolver one that fails with a NUL and control characters in its message.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pino from 'pino';
import type { Job } from 'bullmq';
import { newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { createEndpoint } from '../helpers/webhooks.ts';
import { WEBHOOK_DELIVERY_JOB, WEBHOOK_QUEUE, webhookHandlers } from '../../src/platform/webhooks/delivery.ts';
import type { HostResolver } from '../../src/platform/webhooks/resolve.ts';

const PAYLOAD = { type: 'run.completed', timestamp: '2026-12-06T00:00:00.000Z', data: { workflow: 'golden-path', run_id: 'r', status: 'completed', correlation_id: 'c-1', ended_at: '2026-12-06T00:00:00.000Z' } };

/** A resolver whose every answer is an error naming the host with a NUL, an ESC and a DEL in it. */
const hostileResolver = { timeoutMs: 1000, resolve: () => Promise.reject(Object.assign(new Error('bad\u0000name \u001b[31mred\u007f end'), { code: 'ENOTFOUND' })) } as unknown as HostResolver;

describe('webhook deliveries: an attempt whose error text holds a NUL', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({ env: { WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true' } });
  }, 120_000);
  afterAll(() => stack?.stop());

  it('is recorded (its text without control characters) and settles the delivery at its last attempt, instead of failing to record for ever', async () => {
    const tenantId = newTenant();
    const admin = await stack.token({ tenantId, sub: 'admin', roles: ['admin'] });
    const created = await createEndpoint(stack, admin, { url: 'http://127.0.0.1:9/nul', events: ['run.completed'] });
    expect(created.status, created.text).toBe(201);
    // A host name, so the attempt asks the resolver (an address literal does not).
    await stack.db.admin(`update webhook_endpoints set url = 'http://receiver.example/nul' where id = $1`, [created.json.id]);
    const { rows } = await stack.db.admin(
      `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, next_attempt_at, created_at, updated_at)
       values (gen_random_uuid(), $1, $2, 'run.completed', $3, 'pending', 0, now(), now(), now()) returning id`,
      [tenantId, created.json.id, PAYLOAD],
    );
    const deliveryId = rows[0].id as string;
    const handlers = webhookHandlers({
      orm: stack.container.orm,
      logger: pino({ level: 'silent' }),
      // One attempt: its failure is the delivery's last, recorded without a move to delayed.
      settings: { timeoutMs: 5000, maxAttempts: 1, retryBaseMs: 50, policy: { allowPrivate: true, httpsOnly: false }, resolver: hostileResolver },
      queue: () => stack.container.queues.get(WEBHOOK_QUEUE)!,
      redis: stack.container.redis,
      redeliverAfterMs: 3_600_000,
    });
    const job = { id: 'nul-1', name: WEBHOOK_DELIVERY_JOB, queueName: WEBHOOK_QUEUE, data: { tenant_id: tenantId, delivery_id: deliveryId } } as unknown as Job;
    expect(await handlers[WEBHOOK_DELIVERY_JOB](job)).toMatchObject({ outcome: 'failed', attempt: 1 });
    const [row] = (await stack.db.admin(`select status, attempts, last_error, attempt_log from webhook_deliveries where id = $1`, [deliveryId])).rows;
    expect(row).toMatchObject({ status: 'failed', attempts: 1 });
    expect(row.last_error).toContain('ENOTFOUND');
    expect(row.last_error).toContain('name');
    expect(row.last_error).not.toMatch(/[\u0000-\u001f\u007f]/);
    expect(row.attempt_log).toHaveLength(1);
    expect(row.attempt_log[0].error).toBe(row.last_error);
  });
});
