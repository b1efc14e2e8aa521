/**
 * `/verify` compares an evidence pack with the records of its run, not only with its seal. The
 * application role may insert packs (the evidence step does), and the seal trigger refuses only a pack
 * naming no run of its tenant, or a run that is not pending or running: a pack the application role
 * writes itself for a real run of its tenant that has none yet (one running, between its final decision
 * and its evidence step; before the trigger refused them, one waiting for its approvers) is hashed and
 * sealed as a genuine one is. Its content must then agree with what the run's steps recorded — the
 * partner dossier and economics model rows, the approval request and its decisions, and the run row
 * while run retention keeps it — or the pack reads `valid: false`, naming the record that disagrees.
 * Retention deletes the run row (and checkpoints) and keeps the domain records (ADR 0011): a genuine
 * pack still verifies, `records.run` reading `absent`.
 *
 * Real PostgreSQL as the application role (RLS on); runs executed by the production executor in this
 * process (startRunHost); the forgeries are inserted as the application role under the run's tenant.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { api, CLASS_A_SUBMISSION, CLASS_C_SUBMISSION, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { startRunHost } from '../helpers/run-host.ts';
import { evidenceHash } from '../../src/modules/evidence/evidence.service.ts';
import { GOLDEN_PATH } from '../../src/modules/golden-path/golden-path.workflow.ts';
import { setPolicy } from '../helpers/policy.ts';
import { stepCheckpointNames } from '../helpers/evidence.ts';

const LONG = 120_000;
let stack: TestStack;
let host: ReturnType<typeof startRunHost>;
beforeAll(async () => {
  stack = await startStack();
  host = startRunHost(stack, stack.container.runtime.workflow(GOLDEN_PATH));
}, LONG);
afterAll(async () => {
  await host?.stop();
  await stack?.stop();
});

/** Submits `body` as `submitter-1` of `tenant` and waits for the run to reach one of `statuses`: its view. */
async function runUntil(tenant: string, body: unknown, statuses: string[]): Promise<any> {
  const token = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
  const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token, body, headers: { 'Idempotency-Key': randomUUID() } });
  expect(res.status, res.text).toBe(202);
  return runReaches(tenant, res.json.run_id, statuses);
}

/** Waits for run `runId` of `tenant` to reach one of `statuses`: its view. */
async function runReaches(tenant: string, runId: string, statuses: string[]): Promise<any> {
  const token = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
  return waitFor(
    async () => {
      const r = await api(stack, 'GET', `/api/v1/golden-path/runs/${runId}`, { token });
      return statuses.includes(r.json?.status) ? r.json : undefined;
    },
    { timeoutMs: 60_000, intervalMs: 50, what: `the run to reach ${statuses.join(' or ')}` },
  );
}

async function verify(tenant: string, id: string): Promise<any> {
  const token = await stack.token({ tenantId: tenant, sub: 'auditor-1' });
  const res = await api(stack, 'GET', `/api/v1/evidence/${id}/verify`, { token });
  expect(res.status, res.text).toBe(200);
  return res.json;
}

/**
 * The content the evidence step would write for `runId`, built as a forger with the application role's
 * rights can: from the run row and its steps' checkpoints (all readable under the tenant), with the
 * approval step's packet as it stands (pending, for a waiting run) unless `packet` replaces it.
 */
async function contentFromRecords(runId: string): Promise<any> {
  const run = (await stack.db.admin(`select * from durable_runs where id = $1`, [runId])).rows[0];
  const outputs = Object.fromEntries(
    (await stack.db.admin(`select step_name, output from durable_checkpoints where run_id = $1 and output is not null`, [runId])).rows.map((r: any) => [r.step_name, r.output]),
  );
  return {
    schema: 'dealix.evidence-pack/v1',
    run: {
      id: run.id,
      tenant_id: run.tenant_id,
      workflow: `${run.workflow}@v${run.workflow_version}`,
      correlation_id: run.correlation_id,
      submitted_by: run.principal,
      submitted_at: (run.created_at as Date).toISOString(),
    },
    submission: run.input,
    partner_dossier: outputs['partner-dossier'],
    economics_model: outputs['economics-model'],
    approval_packet: outputs['approval-packet'],
    outcome: 'approved',
  };
}

/**
 * Inserts `content` as a pack of `runId`, as the application role under `tenant` (sealed by the trigger):
 * its id and hash. The trigger refuses a pack for a run that is not pending or running (a waiting run's,
 * here): the run is made `running` for the insert (the superuser, setup only) and given back its status,
 * as a pack written while its run is running — between its final decision and its evidence step (a
 * worker down), or before the trigger refused other statuses — is. A pack commits only with its run's
 * evidence step's checkpoint naming it (step-rows-bound.test.ts): the superuser makes it name this one.
 */
async function insertAsApp(tenant: string, runId: string, content: unknown): Promise<{ id: string; sha256: string }> {
  const id = randomUUID();
  const sha256 = evidenceHash(content);
  const { status } = (await stack.db.admin(`select status from durable_runs where id = $1`, [runId])).rows[0];
  await stack.db.admin(`update durable_runs set status = 'running' where id = $1`, [runId]);
  await stepCheckpointNames(stack.db, tenant, runId, 'evidence-pack', { evidence_pack_id: id, sha256 });
  const c = new pg.Client({ connectionString: stack.db.appUrl });
  await c.connect();
  try {
    await c.query('begin');
    await c.query(`select set_config('app.tenant_id', $1, true)`, [tenant]);
    await c.query(`insert into evidence_packs (id, tenant_id, run_id, content, sha256, created_at) values ($1, $2, $3, $4::jsonb, $5, now())`, [id, tenant, runId, JSON.stringify(content), sha256]);
    await c.query('commit');
  } finally {
    await c.end();
    await stack.db.admin(`update durable_runs set status = $2 where id = $1`, [runId, status]);
  }
  return { id, sha256 };
}

/** Deletes the run's pack and its seal (the superuser, setup only): a run that ended has one, and one pack per run is kept. */
async function dropPack(runId: string): Promise<void> {
  await stack.db.admin(`delete from evidence_seals where run_id = $1`, [runId]);
  await stack.db.admin(`delete from evidence_packs where run_id = $1`, [runId]);
}

const ALL_MATCH = { run: 'match', partner_dossier: 'match', economics_model: 'match', approval: 'match', approval_policy: 'match' };

describe('an evidence pack forged by the application role for a real run of its tenant', () => {
  // A run waiting for its approvers (class B): no pack yet. The forger approves it in the pack.
  const approvedInThePack = (c: any) => ({
    ...c,
    approval_packet: { ...c.approval_packet, outcome: 'approved', decisions: [{ decided_by: 'approver-9', decision: 'approve', comment: null, decided_at: new Date().toISOString(), kind: 'human' }] },
  });
  const forgeries: [what: string, forge: (c: any) => any, records: Record<string, string>][] = [
    ['an approval no approver gave', approvedInThePack, { ...ALL_MATCH, approval: 'mismatch' }],
    ['a lower cost in the economics model', (c) => approvedInThePack({ ...c, economics_model: { ...c.economics_model, cost: 20000 } }), { ...ALL_MATCH, economics_model: 'mismatch', approval: 'mismatch', approval_policy: 'mismatch' }],
    ['a partner dossier with a higher completeness score', (c) => approvedInThePack({ ...c, partner_dossier: { ...c.partner_dossier, facts: { ...c.partner_dossier.facts, completeness_score: 0.99 } } }), { ...ALL_MATCH, partner_dossier: 'mismatch', approval: 'mismatch' }],
    [
      'another submission, the stored dossier and economics kept',
      (c) => approvedInThePack({ ...c, submission: { ...c.submission, economics: { ...c.submission.economics, onboarding_cost: 1 } } }),
      { ...ALL_MATCH, run: 'mismatch', economics_model: 'mismatch', approval: 'mismatch' },
    ],
  ];

  for (const [what, forge, records] of forgeries) {
    it(`with ${what}: valid false, naming the records that disagree — before and after run retention deleted the run`, { timeout: LONG }, async () => {
      const tenant = newTenant();
      const run = await runUntil(tenant, SAMPLE_SUBMISSION, ['waiting']);
      const forged = await insertAsApp(tenant, run.run_id, forge(await contentFromRecords(run.run_id)));
      const before = await verify(tenant, forged.id);
      // The seal agrees (the trigger sealed what was inserted): only the records tell.
      expect(before).toEqual({ valid: false, sha256: forged.sha256, recomputed_sha256: forged.sha256, recorded_sha256: forged.sha256, records });
      // As retention deletes it (ended runs only; here the superuser, the run row and, by cascade, its checkpoints).
      await stack.db.admin(`delete from durable_runs where id = $1`, [run.run_id]);
      const after = await verify(tenant, forged.id);
      expect(after.valid).toBe(false);
      expect(after.records).toEqual({ ...records, run: 'absent' });
    });
  }

  /**
   * The request and its decision rows made to agree with the forgery — the application role may update
   * a request's status and insert decisions — but the decisions themselves do not allow the outcome: a
   * class C request approved by one approver (four-eyes: it needs two), approved by its own submitter,
   * or approved once its SLA deadline had passed. Every record agrees with the pack; the pack's own
   * decisions say it was not approved.
   */
  it.each([
    ['a class C request approved by a single approver', CLASS_C_SUBMISSION, 'approver-1', 'now()'],
    ["a class B request approved by its run's submitter", SAMPLE_SUBMISSION, 'submitter-1', 'now()'],
    ['a class B request approved after its SLA deadline', SAMPLE_SUBMISSION, 'approver-1', "(select sla_deadline + interval '1 second' from approval_requests where id = $3)"],
  ])('%s, the request and decisions written to agree: valid false, approval mismatch', { timeout: LONG }, async (_what, submission, approver, at) => {
    const tenant = newTenant();
    const run = await runUntil(tenant, submission, ['waiting']);
    const content = await contentFromRecords(run.run_id);
    const packet = content.approval_packet;
    const c = new pg.Client({ connectionString: stack.db.appUrl });
    await c.connect();
    let decidedAt: Date;
    try {
      await c.query('begin');
      await c.query(`select set_config('app.tenant_id', $1, true)`, [tenant]);
      decidedAt = (
        await c.query(
          `insert into approval_decisions (id, tenant_id, approval_request_id, approver, decision, kind, comment, created_at)
           values ($1, $2, $3, $4, 'approve', 'human', null, date_trunc('milliseconds', ${at})) returning created_at`,
          [randomUUID(), tenant, packet.approval_request_id, approver],
        )
      ).rows[0].created_at;
      await c.query(`update approval_requests set status = 'approved', decided_at = now() where id = $1`, [packet.approval_request_id]);
      await c.query('commit');
    } finally {
      await c.end();
    }
    const decisions = [{ decided_by: approver, decision: 'approve', comment: null, decided_at: decidedAt.toISOString(), kind: 'human' }];
    const forged = await insertAsApp(tenant, run.run_id, { ...content, approval_packet: { ...packet, outcome: 'approved', decisions } });
    expect(await verify(tenant, forged.id)).toEqual({ valid: false, sha256: forged.sha256, recomputed_sha256: forged.sha256, recorded_sha256: forged.sha256, records: { ...ALL_MATCH, approval: 'mismatch' } });
  });

  it('a pack for a run whose steps wrote nothing yet (its dossier, economics and approval request absent): valid false', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const done = await runUntil(tenant, CLASS_A_SUBMISSION, ['completed']);
    const content = await contentFromRecords(done.run_id);
    // A pending run of the same tenant, written as the API writes one (the superuser here: setup only).
    const pendingId = randomUUID();
    await stack.db.admin(
      `insert into durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, correlation_id, step_count, created_at, updated_at)
       values ($1, $2, 'golden-path', 1, $3, 'pending', 'submitter-1', $4::jsonb, 'c-pending', 4, date_trunc('milliseconds', now()), now())`,
      [pendingId, tenant, randomUUID().replaceAll('-', ''), JSON.stringify(content.submission)],
    );
    const created = (await stack.db.admin(`select created_at from durable_runs where id = $1`, [pendingId])).rows[0].created_at as Date;
    const forged = await insertAsApp(tenant, pendingId, { ...content, run: { ...content.run, id: pendingId, correlation_id: 'c-pending', submitted_at: created.toISOString() } });
    expect(await verify(tenant, forged.id)).toMatchObject({ valid: false, records: { run: 'match', partner_dossier: 'absent', economics_model: 'absent', approval: 'absent' } });
  });
});

describe("a run's dossier and economics model", () => {
  // What /verify compares a pack with must not be what the forger can rewrite: the application role may
  // insert a run's dossier and economics model (its steps do), never change or delete them, so a pack
  // forged for a run past its second step cannot be made to agree with them.
  it.each([
    [`update partner_dossiers set content = jsonb_set(content, '{facts,completeness_score}', '0.99') where run_id = $1`],
    [`update economics_models set content = jsonb_set(content, '{cost}', '20000') where run_id = $1`],
    [`delete from partner_dossiers where run_id = $1`],
    [`delete from economics_models where run_id = $1`],
    // The version the approval step classified by, and the history of the tenant's policy versions.
    [`update approval_requests set policy_version = 7 where run_id = $1`],
    [`update approval_policy_versions set class_cmin_cost = 1 where $1::uuid is not null`],
    [`delete from approval_policy_versions where $1::uuid is not null`],
  ])('the application role cannot: %s', { timeout: LONG }, async (sql) => {
    const tenant = newTenant();
    const run = await runUntil(tenant, SAMPLE_SUBMISSION, ['waiting']);
    const c = new pg.Client({ connectionString: stack.db.appUrl });
    await c.connect();
    try {
      await c.query('begin');
      await c.query(`select set_config('app.tenant_id', $1, true)`, [tenant]);
      await expect(c.query(sql, [run.run_id])).rejects.toMatchObject({ code: '42501' });
    } finally {
      await c.query('rollback').catch(() => {});
      await c.end();
    }
  });
});

describe('a genuine evidence pack', () => {
  it('of a class A run (approved by policy): valid, every record matching; after run retention, valid with the run absent', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const done = await runUntil(tenant, CLASS_A_SUBMISSION, ['completed']);
    const { evidence_pack_id: id, sha256 } = done.steps[3].output;
    expect(await verify(tenant, id)).toEqual({ valid: true, sha256, recomputed_sha256: sha256, recorded_sha256: sha256, records: ALL_MATCH });
    await stack.db.admin(`delete from durable_runs where id = $1`, [done.run_id]);
    expect(await verify(tenant, id)).toEqual({ valid: true, sha256, recomputed_sha256: sha256, recorded_sha256: sha256, records: { ...ALL_MATCH, run: 'absent' } });
  });

  it('of a class B run approved by a human, of one rejected, and of a class C run approved by two: valid, every record matching (decisions stamped by the database)', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const approvers = [await stack.token({ tenantId: tenant, sub: 'approver-1', roles: ['approver'] }), await stack.token({ tenantId: tenant, sub: 'approver-2', roles: ['approver'] })];
    const cases = [
      [SAMPLE_SUBMISSION, 'approve', 1],
      [SAMPLE_SUBMISSION, 'reject', 1],
      [CLASS_C_SUBMISSION, 'approve', 2],
    ] as const;
    for (const [submission, decision, deciders] of cases) {
      const waiting = await runUntil(tenant, submission, ['waiting']);
      const approvalId = waiting.steps[2].output.approval_request_id as string;
      for (const approver of approvers.slice(0, deciders)) {
        const res = await api(stack, 'POST', `/api/v1/approvals/${approvalId}/decision`, { token: approver, body: { decision, comment: `${decision}d "as seen"` }, headers: { 'Idempotency-Key': randomUUID() } });
        expect(res.status, res.text).toBe(200);
      }
      const done = await runReaches(tenant, waiting.run_id, ['completed', 'rejected']);
      const { evidence_pack_id: id, sha256 } = done.steps[3].output;
      expect(await verify(tenant, id), decision).toEqual({ valid: true, sha256, recomputed_sha256: sha256, recorded_sha256: sha256, records: ALL_MATCH });
    }
  });
});

/**
 * The dossier's and the model's plain columns — partner_name, country, completeness_score; currency, cost,
 * payback_months — are copied by their steps from the content they store beside them, and are what SQL
 * reports read. Before, /verify compared only the content: the owner's `update economics_models set
 * cost = 1` left a genuine pack valid with every record matching, while a report read another cost than
 * the pack's. The tampering is done as the owner (FORCE RLS: naming the tenant), never through the API;
 * each column is then set back from its row's content, which verifies again (compared as doubles,
 * exactly: no false mismatch).
 */
describe("a run's dossier and economics model columns", () => {
  const asOwner = (tenant: string, sql: string) => stack.db.owner(`select set_config('app.tenant_id', '${tenant}', false); ${sql}`);

  /** Submits `body` and decides it as its packet requires (none for class A, four-eyes for C): the completed run's view. */
  async function completed(tenant: string, body: unknown): Promise<any> {
    const run = await runUntil(tenant, body, ['waiting', 'completed']);
    if (run.status === 'completed') return run;
    const packet = run.steps[2].output;
    for (const sub of ['approver-1', 'approver-2'].slice(0, packet.required_approvals)) await approve(tenant, packet.approval_request_id, sub);
    return runReaches(tenant, run.run_id, ['completed']);
  }

  it('each column changed by the owner makes a genuine pack valid false, its record mismatched; set back from the content, valid again', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const done = await completed(tenant, CLASS_A_SUBMISSION);
    const { evidence_pack_id: id, sha256 } = done.steps[3].output;
    const valid = { valid: true, sha256, recomputed_sha256: sha256, recorded_sha256: sha256, records: ALL_MATCH };
    expect(await verify(tenant, id)).toEqual(valid);
    // [table, column, tampered value, the column as its content says]
    const tampers: [string, string, string, string][] = [
      ['partner_dossiers', 'partner_name', `'Acme Trading Ltd'`, `content #>> '{profile,name}'`],
      ['partner_dossiers', 'partner_name', `partner_name || ' '`, `content #>> '{profile,name}'`],
      ['partner_dossiers', 'country', `'AE'`, `content #>> '{profile,country}'`],
      ['partner_dossiers', 'completeness_score', '0.2', `(content #>> '{facts,completeness_score}')::float8`],
      ['partner_dossiers', 'completeness_score', 'completeness_score - 1e-15', `(content #>> '{facts,completeness_score}')::float8`],
      ['economics_models', 'currency', `'USD'`, `content ->> 'currency'`],
      ['economics_models', 'cost', '1', `(content ->> 'cost')::float8`],
      // The next doubles but one above 30,000: no rounding to 15 digits hides it.
      ['economics_models', 'cost', 'cost + 1e-11', `(content ->> 'cost')::float8`],
      ['economics_models', 'payback_months', 'payback_months + 0.01', `(content ->> 'payback_months')::float8`],
      ['economics_models', 'payback_months', 'null', `(content ->> 'payback_months')::float8`],
    ];
    for (const [table, column, value, restored] of tampers) {
      const record = table === 'partner_dossiers' ? 'partner_dossier' : 'economics_model';
      const [, changed] = (await asOwner(tenant, `update ${table} set ${column} = ${value} where run_id = '${done.run_id}'`)) as unknown as pg.QueryResult[];
      expect(changed!.rowCount, `${column} = ${value}`).toBe(1);
      expect(await verify(tenant, id), `${column} = ${value}`).toEqual({ ...valid, valid: false, records: { ...ALL_MATCH, [record]: 'mismatch' } });
      await asOwner(tenant, `update ${table} set ${column} = ${restored} where run_id = '${done.run_id}'`);
      expect(await verify(tenant, id), `${column} set back`).toEqual(valid);
    }
  });

  it('untampered runs at the edges verify, every record matching: no payback (no profit), the largest amounts, a cost of zero (and the owner writing it -0, the same number)', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const economics = SAMPLE_SUBMISSION.economics;
    const most = { onboarding_cost: 999999999999.999, enablement_cost: 999999999999.999, annual_support_cost: 999999999999.999 };
    const cases: [string, unknown][] = [
      ['no payback', { ...SAMPLE_SUBMISSION, economics: { ...economics, win_rate: 0 } }],
      ['the largest KWD amounts (3 decimals)', { ...SAMPLE_SUBMISSION, currency: 'KWD', economics: { ...economics, average_deal_value: 999999999999.999, ...most } }],
      ['the largest JPY amounts', { ...SAMPLE_SUBMISSION, currency: 'JPY', economics: { ...economics, average_deal_value: 1e12, onboarding_cost: 1e12, enablement_cost: 1e12, annual_support_cost: 1e12 } }],
      ['a cost of zero', { ...SAMPLE_SUBMISSION, economics: { ...economics, onboarding_cost: 0, enablement_cost: 0, annual_support_cost: 0 } }],
      // Rates near 1e-300 pass validation: months of 1.2e308, a finite double above 1e308 (1.7976931348623157e308 the largest).
      ['a payback of 1.2e308 months', { ...SAMPLE_SUBMISSION, economics: { expected_deals_per_year: 1, average_deal_value: 1, win_rate: 1e-300, gross_margin: 1, onboarding_cost: 1e7, enablement_cost: 0, annual_support_cost: 0 } }],
    ];
    for (const [what, body] of cases) {
      const done = await completed(tenant, body);
      const { evidence_pack_id: id, sha256 } = done.steps[3].output;
      expect(await verify(tenant, id), what).toEqual({ valid: true, sha256, recomputed_sha256: sha256, recorded_sha256: sha256, records: ALL_MATCH });
    }
    const zero = (await stack.db.admin(`select m.run_id, e.id from economics_models m join evidence_packs e using (tenant_id, run_id) where m.tenant_id = $1 and m.cost = 0`, [tenant])).rows;
    expect(zero).toHaveLength(1);
    await asOwner(tenant, `update economics_models set cost = '-0', payback_months = '-0' where run_id = '${zero[0].run_id}'`);
    expect((await stack.db.admin(`select cost::text, payback_months::text from economics_models where run_id = $1`, [zero[0].run_id])).rows).toEqual([{ cost: '-0', payback_months: '-0' }]);
    expect((await verify(tenant, zero[0].id)).records).toEqual(ALL_MATCH);
  });
});

async function approve(tenant: string, approvalId: string, sub: string) {
  const token = await stack.token({ tenantId: tenant, sub, roles: ['approver'] });
  const res = await api(stack, 'POST', `/api/v1/approvals/${approvalId}/decision`, { token, body: { decision: 'approve' }, headers: { 'Idempotency-Key': randomUUID() } });
  expect(res.status, res.text).toBe(200);
  return res.json;
}

// It raises class C's cost bound, so it loosens the defaults: proposed by admin-1, approved by admin-2 (ADR 0010).
const POLICY = { class_a_max_cost: 50000, class_a_max_payback_months: 6, class_c_min_cost: 300000, class_c_min_payback_months: 24, sla_b_seconds: 7200, sla_c_seconds: 14400, currency: 'SAR' };

/**
 * An evidence pack's approval packet records the approval policy its run was classified under. The class,
 * approvals needed and SLA of the run's approval request must follow from that policy and the run's
 * stored economics model, and the tenant's policy row of that version (while it is still the one in
 * force), or the platform defaults (version 0), must be that policy. Before, neither was compared: a pack
 * verified while the policy row it names said otherwise, and while its request had a class its policy
 * never gives (one approver where four-eyes was needed). The tampering is done as the owner (the
 * superuser: someone with write access to the rows), never through the API.
 */
describe("an evidence pack's approval policy", () => {
  it('a genuine pack under the tenant policy verifies; the policy row of its version changed by the owner makes it read approval_policy mismatch', { timeout: LONG }, async () => {
    const tenant = newTenant();
    expect((await setPolicy(stack, tenant, POLICY)).status).toBe(200);
    const waiting = await runUntil(tenant, SAMPLE_SUBMISSION, ['waiting']);
    expect(waiting.steps[2].output.policy).toMatchObject({ source: 'tenant', version: 1, policy: POLICY, updated_by: 'admin-1', approved_by: 'admin-2' });
    await approve(tenant, waiting.steps[2].output.approval_request_id, 'approver-1');
    const done = await runReaches(tenant, waiting.run_id, ['completed']);
    const { evidence_pack_id: id, sha256 } = done.steps[3].output;
    const sealed = { valid: true, sha256, recomputed_sha256: sha256, recorded_sha256: sha256, records: ALL_MATCH };
    expect(await verify(tenant, id)).toEqual(sealed);
    // Each column of the version the pack names, rewritten in place (its version kept), then restored.
    const tampers: [string, string][] = [
      ['class_cmin_cost', '900000'],
      ['class_amax_payback_months', '12'],
      ['sla_bseconds', '86400'],
      ['currency', "'USD'"],
      ['approved_by', "'admin-9'"],
      ['updated_by', "'admin-9'"],
      ['updated_at', "updated_at - interval '1 day'"],
    ];
    for (const [column, value] of tampers) {
      const [before] = (await stack.db.admin(`select ${column} as v from approval_policies where tenant_id = $1`, [tenant])).rows;
      await stack.db.admin(`update approval_policies set ${column} = ${value} where tenant_id = $1`, [tenant]);
      expect(await verify(tenant, id), column).toEqual({ ...sealed, valid: false, records: { ...ALL_MATCH, approval_policy: 'mismatch' } });
      await stack.db.admin(`update approval_policies set ${column} = $2 where tenant_id = $1`, [tenant, before.v]);
      expect(await verify(tenant, id), `${column} restored`).toEqual(sealed);
    }
    // A policy replaced since (a later version): its version is kept in the history, and still compared.
    expect((await setPolicy(stack, tenant, { ...POLICY, sla_b_seconds: 3600 })).status).toBe(200);
    expect(await verify(tenant, id)).toEqual(sealed);
    // The history row of its version rewritten (the owner: the application role cannot), then restored.
    for (const [column, value] of tampers) {
      const [before] = (await stack.db.admin(`select ${column} as v from approval_policy_versions where tenant_id = $1 and version = 1`, [tenant])).rows;
      await stack.db.admin(`update approval_policy_versions set ${column} = ${value} where tenant_id = $1 and version = 1`, [tenant]);
      expect(await verify(tenant, id), `history ${column}`).toEqual({ ...sealed, valid: false, records: { ...ALL_MATCH, approval_policy: 'mismatch' } });
      await stack.db.admin(`update approval_policy_versions set ${column} = $2 where tenant_id = $1 and version = 1`, [tenant, before.v]);
    }
    expect(await verify(tenant, id)).toEqual(sealed);
    // A version before the history began (not backfilled: its row is not there, the next one is): not compared, still valid.
    await stack.db.admin(`delete from approval_policy_versions where tenant_id = $1 and version = 1`, [tenant]);
    expect(await verify(tenant, id)).toEqual({ ...sealed, records: { ...ALL_MATCH, approval_policy: 'absent' } });
    // A version the tenant's policy never reached (no history row, none in force at or past it): the pack names a policy that was never in force.
    await stack.db.admin(`delete from approval_policy_versions where tenant_id = $1`, [tenant]);
    await stack.db.admin(`update approval_policies set version = 0 where tenant_id = $1`, [tenant]);
    expect(await verify(tenant, id)).toEqual({ ...sealed, valid: false, records: { ...ALL_MATCH, approval_policy: 'mismatch' } });
  });

  it('every policy write records its version in the history, as the policy row reads (a tightening PUT, an approved change)', { timeout: LONG }, async () => {
    const tenant = newTenant();
    expect((await setPolicy(stack, tenant, POLICY)).status).toBe(200); // a loosening: proposed, then approved
    expect((await setPolicy(stack, tenant, { ...POLICY, sla_b_seconds: 3600 })).status).toBe(200); // a tightening: applied at once
    const cols = `version, class_amax_cost, class_amax_payback_months, class_cmin_cost, class_cmin_payback_months, sla_bseconds, sla_cseconds, currency, updated_at, updated_by, approved_by`;
    const history = (await stack.db.admin(`select ${cols} from approval_policy_versions where tenant_id = $1 order by version`, [tenant])).rows;
    expect(history.map((h: any) => [h.version, h.sla_bseconds, h.updated_by, h.approved_by])).toEqual([
      [1, 7200, 'admin-1', 'admin-2'],
      [2, 3600, 'admin-1', null],
    ]);
    expect(history[1]).toEqual((await stack.db.admin(`select ${cols} from approval_policies where tenant_id = $1`, [tenant])).rows[0]);
    // Version 1's time is the approval's (the row restamped after the upsert's wait), as the change's decided_at.
    const [change] = (await stack.db.admin(`select decided_at from approval_policy_changes where tenant_id = $1 and status = 'approved'`, [tenant])).rows;
    expect(history[0].updated_at).toEqual(change.decided_at);
  });

  /** Runs `statements` as the application role under `tenant`, in one transaction (its error, if one fails). */
  async function asApp(tenant: string, statements: [string, unknown[]][]): Promise<void> {
    const c = new pg.Client({ connectionString: stack.db.appUrl });
    await c.connect();
    try {
      await c.query('begin');
      await c.query(`select set_config('app.tenant_id', $1, true)`, [tenant]);
      for (const [sql, params] of statements) await c.query(sql, params);
      await c.query('commit');
    } finally {
      await c.query('rollback').catch(() => {});
      await c.end();
    }
  }
  const HISTORY_COLUMNS = `version, class_amax_cost, class_amax_payback_months, class_cmin_cost, class_cmin_payback_months, sla_bseconds, sla_cseconds, currency, updated_at, updated_by, approved_by`;
  const historyOf = async (tenant: string) => (await stack.db.admin(`select ${HISTORY_COLUMNS} from approval_policy_versions where tenant_id = $1 order by version`, [tenant])).rows;
  const policyOf = async (tenant: string) => (await stack.db.admin(`select ${HISTORY_COLUMNS} from approval_policies where tenant_id = $1`, [tenant])).rows[0];
  /** The tenant's policy row copied into the history as `version` (by the application role, as a forger would). */
  const COPY_AS_VERSION = `insert into approval_policy_versions (id, tenant_id, ${HISTORY_COLUMNS})
      select gen_random_uuid(), tenant_id, $2::int, ${HISTORY_COLUMNS.replace('version, ', '')} from approval_policies where tenant_id = $1`;

  it("the application role cannot insert a history row that is not its policy as its transaction commits it: a made-up version, lower or higher, is refused (42501); one its own update makes the policy's is kept", { timeout: LONG }, async () => {
    const tenant = newTenant();
    expect((await setPolicy(stack, tenant, POLICY)).status).toBe(200);
    expect((await setPolicy(stack, tenant, { ...POLICY, sla_b_seconds: 3600 })).status).toBe(200);
    const before = await historyOf(tenant);
    expect(before.map((h: any) => h.version)).toEqual([1, 2]);
    // Before the history began (it would turn a pack naming version 0 from mismatch to match), and not yet reached.
    for (const version of [0, 3]) {
      await expect(asApp(tenant, [[COPY_AS_VERSION, [tenant, version]]]), `version ${version}`).rejects.toMatchObject({ code: '42501' });
    }
    // The next version with other values than the update in the same transaction makes the policy's.
    await expect(asApp(tenant, [
      [COPY_AS_VERSION, [tenant, 3]],
      [`update approval_policies set version = 3, sla_bseconds = 1800 where tenant_id = $1`, [tenant]],
    ])).rejects.toMatchObject({ code: '42501' });
    expect(await historyOf(tenant)).toEqual(before);
    // The policy's own version, as the transaction leaves it: recorded once (the trigger's copy meets the same row).
    await asApp(tenant, [
      [`update approval_policies set version = 3, sla_bseconds = 1800 where tenant_id = $1`, [tenant]],
      [COPY_AS_VERSION, [tenant, 3]],
    ]);
    expect(await historyOf(tenant)).toEqual([...before, await policyOf(tenant)]);
  });

  /** The previous release's upsert of a policy version (applyPolicy before the history existed): it records none. */
  const OLD_UPSERT = `insert into approval_policies as p (id, tenant_id, class_amax_cost, class_amax_payback_months, class_cmin_cost, class_cmin_payback_months,
        sla_bseconds, sla_cseconds, currency, updated_at, updated_by, approved_by, version)
      values ($1, $2, 40000, 6, $3, 24, 7200, 14400, 'SAR', statement_timestamp(), 'admin-1', $4, $5 + 1)
      on conflict (tenant_id) do update set class_cmin_cost = excluded.class_cmin_cost, updated_at = excluded.updated_at, updated_by = excluded.updated_by,
        approved_by = excluded.approved_by, version = p.version + 1
      where p.version = $5`;

  it("a version written by a release that records none (an old web process's PUT, and its approved change: the upsert, then the approval's restamp) is in the history all the same, as the row reads when it commits", { timeout: LONG }, async () => {
    const tenant = newTenant();
    await asApp(tenant, [[OLD_UPSERT, [randomUUID(), tenant, 200000, null, 0]]]);
    expect(await historyOf(tenant)).toEqual([await policyOf(tenant)]);
    // The change it approves (a raised class C bound), proposed by admin-1 on version 1.
    const change = randomUUID();
    const proposed = { class_a_max_cost: 40000, class_a_max_payback_months: 6, class_c_min_cost: 400000, class_c_min_payback_months: 24, sla_b_seconds: 7200, sla_c_seconds: 14400, currency: 'SAR' };
    await asApp(tenant, [
      [`insert into approval_policy_changes (id, tenant_id, policy, base_version, loosens, status, proposed_by, created_at, expires_at)
          values ($1, $2, $3::jsonb, 1, '["class_c_min_cost"]', 'pending', 'admin-1', now(), now() + interval '1 hour')`, [change, tenant, JSON.stringify(proposed)]],
    ]);
    await asApp(tenant, [
      [OLD_UPSERT, [randomUUID(), tenant, 400000, 'admin-2', 1]],
      // The approval's restamp, a later statement of its transaction (its time, as approveChange writes it: the
      // change's four_eyes trigger admits no decision dated past its statement): the history keeps the time the row keeps.
      [`with c as (update approval_policy_changes set status = 'approved', decided_by = 'admin-2', decided_at = statement_timestamp() where id = $2 returning decided_at)
          update approval_policies set updated_at = c.decided_at from c where tenant_id = $1`, [tenant, change]],
    ]);
    const history = await historyOf(tenant);
    expect(history.map((h: any) => [h.version, h.class_cmin_cost, h.approved_by])).toEqual([
      [1, 200000, null],
      [2, 400000, 'admin-2'],
    ]);
    expect(history[1]).toEqual(await policyOf(tenant));
  });

  /**
   * The approval step records the version it classified by on the request (a column the application role
   * may not update): a pack that names no policy, no version, or another version than its request's —
   * a forger's way round the comparison above — reads mismatch. The forgeries are inserted as the
   * application role for a completed class A run (its genuine content otherwise).
   */
  it.each([
    ['no policy', (p: any) => { const { policy: _, ...rest } = p; return rest; }],
    ['a policy without its version', (p: any) => { const { version: _, ...policy } = p.policy; return { ...p, policy }; }],
    ['an earlier version of the policy (replaced since, kept in the history)', (p: any) => ({ ...p, policy: { ...p.policy, version: 1, policy: POLICY, updated_at: null } })],
  ])('a pack whose packet names %s, forged by the application role: approval_policy mismatch', { timeout: LONG }, async (_what, forge) => {
    const tenant = newTenant();
    expect((await setPolicy(stack, tenant, POLICY)).status).toBe(200);
    expect((await setPolicy(stack, tenant, { ...POLICY, sla_b_seconds: 3600 })).status).toBe(200);
    const [v1] = (await stack.db.admin(`select updated_at from approval_policy_versions where tenant_id = $1 and version = 1`, [tenant])).rows;
    const done = await runUntil(tenant, CLASS_A_SUBMISSION, ['completed']);
    expect(done.steps[2].output.policy).toMatchObject({ version: 2 });
    expect((await stack.db.admin(`select policy_version from approval_requests where run_id = $1`, [done.run_id])).rows).toEqual([{ policy_version: 2 }]);
    const content = await contentFromRecords(done.run_id);
    let packet = forge(content.approval_packet);
    if (packet.policy?.version === 1) packet = { ...packet, policy: { ...packet.policy, updated_at: (v1.updated_at as Date).toISOString(), updated_by: 'admin-1', approved_by: 'admin-2' } };
    // Without the request's version, this packet's policy would agree: the history row of version 1 is its policy.
    expect(await verify(tenant, done.steps[3].output.evidence_pack_id)).toMatchObject({ valid: true, records: ALL_MATCH });
    await dropPack(done.run_id);
    const forged = await insertAsApp(tenant, done.run_id, { ...content, approval_packet: packet });
    expect(await verify(tenant, forged.id)).toEqual({ valid: false, sha256: forged.sha256, recomputed_sha256: forged.sha256, recorded_sha256: forged.sha256, records: { ...ALL_MATCH, approval_policy: 'mismatch' } });
  });

  it('a request from before its version was recorded (policy_version null) keeps the earlier rule: a packet without a policy reads absent', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const done = await runUntil(tenant, CLASS_A_SUBMISSION, ['completed']);
    await stack.db.admin(`update approval_requests set policy_version = null where run_id = $1`, [done.run_id]);
    const content = await contentFromRecords(done.run_id);
    const { policy: _, ...packet } = content.approval_packet;
    await dropPack(done.run_id);
    const forged = await insertAsApp(tenant, done.run_id, { ...content, approval_packet: packet });
    expect(await verify(tenant, forged.id)).toMatchObject({ valid: true, records: { ...ALL_MATCH, approval_policy: 'absent' } });
  });

  it('a class C request rewritten by the owner to class B (one approver): the pack its run then writes agrees with the request, not with its policy', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const waiting = await runUntil(tenant, CLASS_C_SUBMISSION, ['waiting']);
    const packet = waiting.steps[2].output;
    expect(packet).toMatchObject({ approval_class: 'C', required_approvals: 2, policy: { source: 'default', version: 0 } });
    // The request and the approval step's checkpoint rewritten alike: class B, one approver.
    const b = { approval_class: 'B', required_approvals: 1, reasons: ['between the automatic and the escalated thresholds'] };
    await stack.db.admin(`update approval_requests set approval_class = 'B', required_approvals = 1, reasons = $2::jsonb where id = $1`, [packet.approval_request_id, JSON.stringify(b.reasons)]);
    await stack.db.admin(`update durable_checkpoints set output = output || $2::jsonb where run_id = $1 and step_name = 'approval-packet'`, [waiting.run_id, JSON.stringify(b)]);
    // One approval now ends the wait.
    expect(await approve(tenant, packet.approval_request_id, 'approver-1')).toMatchObject({ status: 'approved', approvals: 1, required_approvals: 1 });
    const done = await runReaches(tenant, waiting.run_id, ['completed']);
    const { evidence_pack_id: id, sha256 } = done.steps[3].output;
    expect(done.steps[2].output).toMatchObject(b);
    expect(await verify(tenant, id)).toEqual({ valid: false, sha256, recomputed_sha256: sha256, recorded_sha256: sha256, records: { ...ALL_MATCH, approval_policy: 'mismatch' } });
  });
});
