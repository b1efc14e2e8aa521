/**
 * An evidence pack names a run of its tenant. The application role may insert packs (each sealed by the
 * insert's trigger); the trigger also refuses a pack whose (tenant, run) is no run of the database — a
 * made-up run id, or another tenant's run — so a self-consistent pack cannot be invented for a run that
 * never was. Not a foreign key: run retention deletes runs and keeps their packs (ADR 0011), so the run is
 * checked when the pack is written, and `/verify` still finds a pack's seal after its run is gone. A pack
 * written before the check (or by the owner with triggers off) whose content names another tenant than
 * its own still reads valid: false. (These packs' content is made up: the check here is on the run they
 * name, not on what they say of it — that `/verify` compares with the run's records, and finds none here:
 * evidence-records.test.ts.)
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { seedRun } from '../helpers/db.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { evidenceHash, verifyEvidence } from '../../src/modules/evidence/evidence.service.ts';
import { sealedButUnrecorded, stepCheckpointNames } from '../helpers/evidence.ts';

let stack: TestStack;
beforeAll(async () => {
  stack = await startStack({ api: false });
});
afterAll(async () => stack?.stop());


const packFor = (runId: string, tenant: string) => {
  const content = { schema: 'dealix.evidence-pack/v1', run: { id: runId, tenant_id: tenant }, outcome: 'approved' };
  return { id: randomUUID(), content, sha256: evidenceHash(content) };
};

/** Inserts a pack as the application role under `tenant`, as the evidence step does (one transaction). */
async function insertAsApp(tenant: string, runId: string, pack: ReturnType<typeof packFor>): Promise<void> {
  const c = new pg.Client({ connectionString: stack.db.appUrl });
  await c.connect();
  try {
    await c.query('begin');
    await c.query(`select set_config('app.tenant_id', $1, true)`, [tenant]);
    await c.query(`insert into evidence_packs (id, tenant_id, run_id, content, sha256, created_at) values ($1, $2, $3, $4::jsonb, $5, now())`, [pack.id, tenant, runId, JSON.stringify(pack.content), pack.sha256]);
    await c.query('commit');
  } finally {
    await c.end();
  }
}

const verify = (tenant: string, id: string) => tenantEm(stack.container.orm, tenant).transactional((tx) => verifyEvidence(tx, id));
const packCount = async (id: string) => Number((await stack.db.admin(`select (select count(*) from evidence_packs where id = $1) + (select count(*) from evidence_seals where id = $1) as n`, [id])).rows[0].n);

describe('an evidence pack names a run of its tenant', () => {
  it('the application role cannot insert a pack for a run that does not exist', async () => {
    const tenant = newTenant();
    const madeUp = randomUUID();
    const pack = packFor(madeUp, tenant);
    await expect(insertAsApp(tenant, madeUp, pack)).rejects.toMatchObject({ code: '23503' });
    expect(await packCount(pack.id)).toBe(0);
  });

  it("nor one under another tenant for that tenant's run", async () => {
    const owner = newTenant();
    const other = newTenant();
    const runId = await seedRun(stack.db, owner);
    const pack = packFor(runId, other);
    await expect(insertAsApp(other, runId, pack)).rejects.toMatchObject({ code: '23503' });
    expect(await packCount(pack.id)).toBe(0);
  });

  // A pack is written by its run's evidence step, in the step's transaction: the run is then pending (a
  // failed run retried at that step) or running, never waiting for its approvers nor ended. A pack the
  // application role writes by hand for a run waiting days for an approver, or for one that ended without
  // one (failed, expired, cancelled), is refused when inserted, not only reported by /verify.
  it.each(['waiting', 'completed', 'rejected', 'failed', 'approval_expired', 'cancelled'])('nor one for a run of its tenant that is %s (not at its evidence step)', async (status) => {
    const tenant = newTenant();
    const runId = await seedRun(stack.db, tenant);
    await stack.db.admin(`update durable_runs set status = $2 where id = $1`, [runId, status]);
    const pack = packFor(runId, tenant);
    await expect(insertAsApp(tenant, runId, pack)).rejects.toMatchObject({ code: 'DX001', message: expect.stringContaining(`which is ${status}`) });
    expect(await packCount(pack.id)).toBe(0);
  });

  it('a pack for a run of its tenant is written and sealed, and its seal still found after run retention deleted the run', async () => {
    const tenant = newTenant();
    const runId = await seedRun(stack.db, tenant);
    const pack = packFor(runId, tenant);
    // Its run's evidence step's checkpoint names it: a pack commits only with it (step-rows-bound.test.ts).
    await stepCheckpointNames(stack.db, tenant, runId, 'evidence-pack', { evidence_pack_id: pack.id, sha256: pack.sha256 });
    await insertAsApp(tenant, runId, pack);
    expect(await verify(tenant, pack.id)).toEqual(sealedButUnrecorded(pack.sha256));
    // Run retention deletes the run (and its checkpoints), never its pack: its hash and seal still agree.
    await stack.db.admin(`delete from durable_runs where id = $1`, [runId]);
    expect(await verify(tenant, pack.id)).toEqual(sealedButUnrecorded(pack.sha256, 'absent'));
  });

  it('a pack written without the check whose content names another tenant reads valid: false', async () => {
    // Such a pack could be inserted before this check existed: a copy of tenant A's pack (content and hash)
    // under tenant B with A's run id — only the tenant differs. The superuser writes it as that release's
    // insert did: the pack and, by its trigger then, its seal (triggers off, so the check does not run).
    const owner = newTenant();
    const other = newTenant();
    const runId = await seedRun(stack.db, owner);
    const original = packFor(runId, owner);
    await stepCheckpointNames(stack.db, owner, runId, 'evidence-pack', { evidence_pack_id: original.id, sha256: original.sha256 });
    await insertAsApp(owner, runId, original);
    const copy = randomUUID();
    const c = new pg.Client({ connectionString: stack.db.adminUrl });
    await c.connect();
    try {
      await c.query('begin');
      await c.query(`set local session_replication_role = replica`);
      await c.query(`insert into evidence_packs (id, tenant_id, run_id, content, sha256, created_at) values ($1, $2, $3, $4::jsonb, $5, now())`, [copy, other, runId, JSON.stringify(original.content), original.sha256]);
      await c.query(`insert into evidence_seals (id, tenant_id, run_id, sha256, created_at) select id, tenant_id, run_id, sha256, created_at from evidence_packs where id = $1`, [copy]);
      await c.query('commit');
    } finally {
      await c.end();
    }
    const sha = original.sha256;
    // Not valid for naming another tenant, as before records were compared (the copy's tenant has no records of that run either).
    expect(await verify(other, copy)).toMatchObject({ valid: false, sha256: sha, recomputed_sha256: sha, recorded_sha256: sha, records: { run: 'absent', approval: 'absent' } });
    expect(await verify(owner, original.id)).toEqual(sealedButUnrecorded(sha));
  });
});
