/**
 * An evidence pack and an approval request are their run's step's rows (ADR 0001, amendment "A step's rows
 * commit with its checkpoint"): the application role may insert both tables, so a statement of its own — a
 * bug, or a compromised API or worker process — could write a pack for a run still at its first steps (its
 * evidence step then fails on the pack's unique key, or `/verify` reports a pack the run never produced), or
 * a request before the run's approval step (step 3 then fails on it, or an approver decides a request whose
 * packet the step never wrote). Each insert is held, at its transaction's commit, to the checkpoint of the
 * step that writes it, committed with it: the evidence step's `completed` checkpoint naming the pack's id and
 * hash; the approval step's `waiting` (or, class A, `completed`) checkpoint naming the request's id, class and
 * required approvals. The forgeries below connect as the application role (row-level security in force).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { seedRun } from '../helpers/db.ts';
import { evidenceHash } from '../../src/modules/evidence/evidence.service.ts';

let stack: TestStack;
beforeAll(async () => {
  stack = await startStack({ api: false });
});
afterAll(async () => stack?.stop());

type Stmt = [sql: string, params: unknown[]];

/** Runs `stmts` as the application role in one transaction, each after `set_config` of its tenant (as a group commit's members are sent). */
async function asApp(members: Array<{ tenant: string; stmts: Stmt[] }>): Promise<void> {
  const c = new pg.Client({ connectionString: stack.db.appUrl });
  await c.connect();
  try {
    await c.query('begin');
    try {
      for (const m of members) {
        await c.query(`select set_config('app.tenant_id', $1, true)`, [m.tenant]);
        for (const [sql, params] of m.stmts) await c.query(sql, params);
      }
      await c.query('commit');
    } catch (e) {
      await c.query('rollback').catch(() => undefined);
      throw e;
    }
  } finally {
    await c.end();
  }
}

/** A completed checkpoint of a step, as the owner writes a fixture (the steps before the one under test). */
const completedStep = (tenant: string, runId: string, seq: number, step: string) =>
  stack.db.admin(
    `insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, output, attempt, created_at, updated_at, completed_at)
     values ($1, $2, $3, $4, $5, 'completed', '{}', 1, now(), now(), now())`,
    [randomUUID(), tenant, runId, seq, step],
  );

/** A run of `tenant` whose steps before `seq` completed (its checkpoints), running: the step at `seq` is next. */
async function runAt(tenant: string, seq: number): Promise<string> {
  const runId = await seedRun(stack.db, tenant);
  const steps = ['partner-dossier', 'economics-model', 'approval-packet'];
  for (let s = 1; s < seq; s++) await completedStep(tenant, runId, s, steps[s - 1]!);
  return runId;
}

const checkpoint = (tenant: string, runId: string, seq: number, step: string, status: 'completed' | 'waiting', output: unknown): Stmt => [
  `insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, output, attempt, created_at, updated_at, completed_at)
   values ($1, $2, $3, $4, $5, $6, $7::jsonb, 1, now(), now(), now() + $8::interval)`,
  [randomUUID(), tenant, runId, seq, step, status, JSON.stringify(output), status === 'completed' ? '0' : null],
];

function pack(tenant: string, runId: string) {
  const content = { schema: 'dealix.evidence-pack/v1', run: { id: runId, tenant_id: tenant }, outcome: 'approved' };
  const id = randomUUID();
  const sha256 = evidenceHash(content);
  const insert: Stmt = [
    `insert into evidence_packs (id, tenant_id, run_id, content, sha256, created_at) values ($1, $2, $3, $4::jsonb, $5, now())`,
    [id, tenant, runId, JSON.stringify(content), sha256],
  ];
  /** The evidence step's checkpoint naming this pack (its output as evidencePackStep returns it). */
  const step = (over: Record<string, unknown> = {}) => checkpoint(tenant, runId, 4, 'evidence-pack', 'completed', { evidence_pack_id: id, sha256, outcome: 'approved', ...over });
  return { id, sha256, insert, step };
}

function request(tenant: string, runId: string, cls: 'A' | 'B' = 'B') {
  const id = randomUUID();
  const required = cls === 'A' ? 0 : 1;
  const insert: Stmt = [
    `insert into approval_requests (id, tenant_id, run_id, approval_class, required_approvals, status, submitted_by, reasons, sla_deadline, decided_at, created_at, updated_at)
     values ($1, $2, $3, $4, $5, $6, 'submitter-1', '[]', now() + $7::interval, now() + $8::interval, now(), now())`,
    [id, tenant, runId, cls, required, cls === 'A' ? 'approved' : 'pending', cls === 'A' ? null : '1 day', cls === 'A' ? '0' : null],
  ];
  /** The approval step's checkpoint naming this request: waiting (B) or completed (A), its output the packet. */
  const step = (over: Record<string, unknown> = {}) =>
    checkpoint(tenant, runId, 3, 'approval-packet', cls === 'A' ? 'completed' : 'waiting', {
      approval_request_id: id,
      approval_class: cls,
      required_approvals: required,
      outcome: cls === 'A' ? 'approved' : 'pending',
      ...over,
    });
  return { id, insert, step };
}

const count = async (table: string, id: string) => Number((await stack.db.admin(`select count(*)::int as n from ${table} where id = $1`, [id])).rows[0].n);

describe("an evidence pack commits with its run's evidence step", () => {
  it.each([1, 2, 3, 4])('the application role cannot insert a pack for a running run at step %i without that step', async (seq) => {
    const tenant = newTenant();
    const runId = await runAt(tenant, seq);
    const p = pack(tenant, runId);
    await expect(asApp([{ tenant, stmts: [p.insert] }])).rejects.toMatchObject({ code: '42501' });
    expect(await count('evidence_packs', p.id)).toBe(0);
    expect(await count('evidence_seals', p.id)).toBe(0);
  });

  it('nor one whose evidence step names another pack, or another hash', async () => {
    const tenant = newTenant();
    for (const over of [{ evidence_pack_id: randomUUID() }, { sha256: 'f'.repeat(64) }]) {
      const runId = await runAt(tenant, 4);
      const p = pack(tenant, runId);
      await expect(asApp([{ tenant, stmts: [p.insert, p.step(over)] }])).rejects.toMatchObject({ code: '42501' });
      expect(await count('evidence_packs', p.id)).toBe(0);
    }
  });

  it('a pack committed with the checkpoint of its evidence step is written and sealed, under group commit too', async () => {
    // Two tenants' evidence steps in one transaction, each after its own set_config, as a group commit sends
    // them (ADR 0007): the check at commit reads each pack's own tenant's checkpoint.
    const [a, b] = [newTenant(), newTenant()];
    const [runA, runB] = [await runAt(a, 4), await runAt(b, 4)];
    const [pa, pb] = [pack(a, runA), pack(b, runB)];
    await asApp([
      { tenant: a, stmts: [pa.insert, pa.step()] },
      { tenant: b, stmts: [pb.insert, pb.step()] },
    ]);
    for (const p of [pa, pb]) {
      expect(await count('evidence_packs', p.id)).toBe(1);
      expect(await count('evidence_seals', p.id)).toBe(1);
    }
  });
});

describe("an approval request commits with its run's approval step", () => {
  it.each([1, 2, 3])('the application role cannot insert a request for a running run at step %i without that step', async (seq) => {
    const tenant = newTenant();
    const runId = await runAt(tenant, seq);
    const r = request(tenant, runId);
    await expect(asApp([{ tenant, stmts: [r.insert] }])).rejects.toMatchObject({ code: '42501' });
    expect(await count('approval_requests', r.id)).toBe(0);
  });

  it('nor one whose approval step names another request, class or number of approvals', async () => {
    const tenant = newTenant();
    for (const over of [{ approval_request_id: randomUUID() }, { approval_class: 'C' }, { required_approvals: 2 }]) {
      const runId = await runAt(tenant, 3);
      const r = request(tenant, runId);
      await expect(asApp([{ tenant, stmts: [r.insert, r.step(over)] }])).rejects.toMatchObject({ code: '42501' });
      expect(await count('approval_requests', r.id)).toBe(0);
    }
  });

  it('a request committed with the checkpoint of its approval step is written (waiting, or class A completed), under group commit too', async () => {
    const [a, b] = [newTenant(), newTenant()];
    const [runA, runB] = [await runAt(a, 3), await runAt(b, 3)];
    const [ra, rb] = [request(a, runA, 'B'), request(b, runB, 'A')];
    await asApp([
      { tenant: a, stmts: [ra.insert, ra.step()] },
      { tenant: b, stmts: [rb.insert, rb.step()] },
    ]);
    expect(await count('approval_requests', ra.id)).toBe(1);
    expect(await count('approval_requests', rb.id)).toBe(1);
  });

  it("the check reads under the row's tenant and leaves the transaction's tenant setting as it found it", async () => {
    // Checked before the commit (SET CONSTRAINTS … IMMEDIATE) while another tenant's setting is in force:
    // the request passes, and the setting is still the other tenant's, as the transaction left it.
    const [a, b] = [newTenant(), newTenant()];
    const runA = await runAt(a, 3);
    const r = request(a, runA);
    const c = new pg.Client({ connectionString: stack.db.appUrl });
    await c.connect();
    try {
      await c.query('begin');
      await c.query(`select set_config('app.tenant_id', $1, true)`, [a]);
      for (const [sql, params] of [r.insert, r.step()]) await c.query(sql, params);
      await c.query(`select set_config('app.tenant_id', $1, true)`, [b]);
      await c.query('set constraints all immediate');
      expect((await c.query(`select current_setting('app.tenant_id') as t`)).rows[0].t).toBe(b);
      await c.query('commit');
    } finally {
      await c.end();
    }
    expect(await count('approval_requests', r.id)).toBe(1);
  });

  it('the owner (migrations, repairs, fixtures) is not held to it', async () => {
    const tenant = newTenant();
    const runId = await runAt(tenant, 1);
    const r = request(tenant, runId);
    await stack.db.admin(r.insert[0], r.insert[1]);
    expect(await count('approval_requests', r.id)).toBe(1);
  });
});
