import { afterAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import type { EntityManager } from '@mikro-orm/postgresql';
import { startStack } from '../helpers/stack.ts';
import { createOrm } from '../../src/platform/db/orm.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { stepTransaction } from '../../src/platform/db/step-transaction.ts';
import { entities } from '../../src/entities.ts';
import { sent } from '../helpers/pg-messages.ts';

/**
 * stepTransaction (src/platform/db/step-transaction.ts), the executor's transaction per step, against
 * the real PostgreSQL as the application role: it sends what `em.transactional` sends, commits or rolls
 * back as it does, and a step still running after its transaction ended cannot write outside it.
 */
const stack = await startStack({ api: false });
// One connection: a transaction after a failure provably reuses the connection it failed on.
const orm = await createOrm(stack.container.config, { entities, clientUrl: stack.db.appUrl, poolMax: 1 });
afterAll(async () => {
  await orm.close(true);
  await stack.stop();
});


const insertRun = (tx: EntityManager, id: string, tenant: string) =>
  tx.execute(
    `insert into durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, correlation_id, sequence_num, step_count, created_at, updated_at)
     values (?, ?, 'golden-path', 1, ?, 'pending', 'u', '{}', 'c', 0, 4, now(), now())`,
    [id, tenant, randomUUID()],
  );
const runCount = async (tenant: string, id: string) =>
  Number((await tenantEm(orm, tenant).transactional((tx) => tx.execute<{ n: string }[]>(`select count(*) as n from durable_runs where tenant_id = ? and id = ?`, [tenant, id])))[0]!.n);

describe('stepTransaction', () => {
  it('sends exactly what em.transactional sends: the tenant set with the first statement, then the commit', async () => {
    const tenant = randomUUID();
    const read = (tx: EntityManager) => tx.execute<{ t: string }[]>(`select current_setting('app.tenant_id', true) as t`);
    const ours = await sent(() => stepTransaction(tenantEm(orm, tenant), read));
    const orms = await sent(() => tenantEm(orm, tenant).transactional(read));
    expect(ours.result).toEqual([{ t: tenant }]);
    // What goes ahead of this transaction's first message is not its own: a commit deferred from an earlier
    // transaction on the connection (ADR 0004), or the stack's token-revocation reload (a transaction of its own),
    // both seen in CI under load.
    const own = (texts: string[]) => texts.slice(Math.max(0, texts.findIndex((t) => t.includes("set_config('app.tenant_id'"))));
    expect(own(ours.texts)).toEqual(own(orms.texts));
    expect(ours.texts.at(-1)).toBe('commit');
  });

  it('commits what the callback wrote, under row-level security of the tenant', async () => {
    const tenant = randomUUID();
    const id = randomUUID();
    await stepTransaction(tenantEm(orm, tenant), (tx) => insertRun(tx, id, tenant));
    expect(await runCount(tenant, id)).toBe(1);
    // Another tenant's row is refused by the policy, as in any tenant transaction.
    await expect(stepTransaction(tenantEm(orm, tenant), (tx) => insertRun(tx, randomUUID(), randomUUID()))).rejects.toThrow(/row-level security/);
  });

  it('a failing callback: its error, nothing of it committed, the connection clean for the next transaction', async () => {
    const tenant = randomUUID();
    const id = randomUUID();
    const boom = new Error('the step failed');
    await expect(
      stepTransaction(tenantEm(orm, tenant), async (tx) => {
        await insertRun(tx, id, tenant);
        await tx.execute('select 1');
        throw boom;
      }),
    ).rejects.toBe(boom);
    expect(await runCount(tenant, id)).toBe(0);
    const again = randomUUID();
    await stepTransaction(tenantEm(orm, tenant), (tx) => insertRun(tx, again, tenant));
    expect(await runCount(tenant, again)).toBe(1);
  });

  it('a step still running after its transaction ended cannot write outside it', async () => {
    const tenant = randomUUID();
    let straggler!: EntityManager;
    await expect(
      stepTransaction(tenantEm(orm, tenant), async (tx) => {
        straggler = tx;
        await tx.execute('select 1');
        throw new Error('aborted');
      }),
    ).rejects.toThrow('aborted');
    const late = randomUUID();
    await expect(insertRun(straggler, late, tenant)).rejects.toThrow();
    expect(await runCount(tenant, late)).toBe(0);
    // The same after a commit: the step's fork is done with.
    let committed!: EntityManager;
    await stepTransaction(tenantEm(orm, tenant), async (tx) => {
      committed = tx;
      await tx.execute('select 1');
    });
    const later = randomUUID();
    await expect(insertRun(committed, later, tenant)).rejects.toThrow();
    expect(await runCount(tenant, later)).toBe(0);
  });
});
