/**
 * Migration approval_withdrawn_status on a database that has history: the pending requests of runs
 * cancelled before it read `withdrawn` after it (every tenant's, although RLS is forced on the owner
 * that migrates), nothing else changes, row-level security is still forced, and the schema then
 * matches the entities with nothing pending (what `npm run db:check` reports). Down and up again too.
 */
import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createOrm } from '../../src/platform/db/orm.ts';
import { migrate, schemaStatus } from '../../src/platform/db/migrate.ts';
import { entities } from '../../src/entities.ts';
import { migrateUpTo, migrationTestDatabase } from '../helpers/migrations.ts';

const PREVIOUS = 'Migration20261203102508_approvals_keyset_indexes';
const THIS = 'Migration20261203134347_approval_withdrawn_status';

const database = migrationTestDatabase();
const admin = database.admin;

/** A run with its approval request, as the release before this one stored them (superuser: no RLS in the way). */
async function runWithRequest(tenant: string, runStatus: string, requestStatus: string): Promise<{ runId: string; requestId: string }> {
  const runId = randomUUID();
  const requestId = randomUUID();
  const ended = !['pending', 'running', 'waiting'].includes(runStatus);
  await admin(
    `insert into durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, correlation_id, step_count, created_at, updated_at, completed_at)
     values ($1, $2, 'golden-path', 1, $3, $4, 'submitter-1', '{}', 'c', 4, now() - interval '2 hours', now() - interval '1 hour', $5)`,
    [runId, tenant, randomUUID().replaceAll('-', ''), runStatus, ended ? new Date(Date.now() - 3_600_000 - Math.floor(Math.random() * 1000)) : null],
  );
  await admin(
    `insert into approval_requests (id, tenant_id, run_id, approval_class, required_approvals, status, submitted_by, reasons, sla_deadline, decided_at, created_at, updated_at)
     values ($1, $2, $3, 'B', 1, $4, 'submitter-1', '[]', now() + interval '1 day', $5, now() - interval '2 hours', now() - interval '2 hours')`,
    [requestId, tenant, runId, requestStatus, requestStatus === 'pending' ? null : new Date(Date.now() - 5_400_000)],
  );
  return { runId, requestId };
}

const requests = async () =>
  Object.fromEntries(
    (await admin(`select a.id, a.status, a.decided_at, r.completed_at from approval_requests a join durable_runs r on r.id = a.run_id`)).map((r) => [
      r.id as string,
      { status: r.status as string, decided_at: r.decided_at as Date | null, completed_at: r.completed_at as Date | null },
    ]),
  );

describe('migration approval_withdrawn_status', () => {
  it("withdraws every tenant's pending requests of cancelled runs (decided_at the cancel's time), changes nothing else, keeps RLS forced, and leaves db:check clean; down and up again", async () => {
    // This migration comes first of those pending after PREVIOUS; later ones run with it.
    const pending = await migrateUpTo(database.config, PREVIOUS);
    expect(pending[0]).toBe(THIS);
    const [t1, t2] = [randomUUID(), randomUUID()];
    const fixed = [await runWithRequest(t1, 'cancelled', 'pending'), await runWithRequest(t2, 'cancelled', 'pending')];
    const untouched = [
      await runWithRequest(t1, 'waiting', 'pending'),
      await runWithRequest(t1, 'cancelled', 'approved'),
      await runWithRequest(t2, 'approval_expired', 'expired'),
      await runWithRequest(t2, 'completed', 'rejected'),
    ];
    const before = await requests();

    // What `npm run db:migrate` runs (as the owner, RLS forced on it too), then what `npm run db:check` reads.
    expect(await migrate(database.config, entities)).toEqual(pending);
    const after = await requests();
    for (const { requestId } of fixed) expect(after[requestId]).toEqual({ ...before[requestId], status: 'withdrawn', decided_at: before[requestId]!.completed_at });
    for (const { requestId } of untouched) expect(after[requestId]).toEqual(before[requestId]);
    expect(await admin(`select relname, relforcerowsecurity from pg_class where relname in ('approval_requests', 'durable_runs') order by relname`)).toEqual([
      { relname: 'approval_requests', relforcerowsecurity: true },
      { relname: 'durable_runs', relforcerowsecurity: true },
    ]);
    const check = await createOrm(database.config, { entities, role: 'owner', poolMax: 1 });
    try {
      expect(await schemaStatus(check)).toEqual({ pending: [], drift: '' });

      // Down: the old code knows no `withdrawn`, so those requests read pending again; up withdraws them again.
      await check.migrator.down({ to: PREVIOUS });
      const down = await requests();
      for (const { requestId } of fixed) expect(down[requestId]).toEqual({ ...before[requestId], status: 'pending', decided_at: null });
      await expect(admin(`update approval_requests set status = 'withdrawn' where id = $1`, [fixed[0]!.requestId])).rejects.toThrow(/approval_requests_status_check/);
      await check.migrator.up();
      const again = await requests();
      for (const { requestId } of fixed) expect(again[requestId]!.status).toBe('withdrawn');
      for (const { requestId } of untouched) expect(again[requestId]).toEqual(before[requestId]);
      expect(await schemaStatus(check)).toEqual({ pending: [], drift: '' });
    } finally {
      await check.close(true);
    }
  });
});
