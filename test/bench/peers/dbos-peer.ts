/**
 * DBOS Transact 5.3 peer: a four-step durable workflow whose steps make the same database writes as
 * the golden path's four steps (same tables, same rows, same tenant context and RLS, same pure
 * functions for the content), on the same PostgreSQL, in its own database. DBOS checkpoints each
 * step's output in its system schema; the app write is a plain `pg` transaction inside the step
 * (the core SDK has no transactional data source; those are separate packages).
 *
 * Workflows are started in-process with DBOS.startWorkflow, the way a DBOS application runs them.
 * The benchmark sends {type:'run', params}; the peer answers {type:'result'} with the closed-loop result.
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { DBOS } from '@dbos-inc/dbos-sdk';
import { installIoCounter } from '../lib/io-counter.ts';
import { childChannel } from '../lib/child-ipc.ts';
import { ioStats } from '../lib/io-stats.ts';
import { Completions, closedLoop } from '../lib/closed-loop.ts';
import { nowMs } from '../lib/stats.ts';
import { buildDossier } from '../../../src/modules/golden-path/partner-dossier.step.ts';
import { buildEconomics, paybackRatio } from '../../../src/modules/golden-path/economics-model.step.ts';
import { appliedPolicy, classify, CLASSIFIED_EXACTLY, defaultPolicy, packetBasis } from '../../../src/modules/approvals/approval.policy.ts';
import { evidenceHash } from '../../../src/modules/evidence/evidence.service.ts';
import { provenance } from '../../../src/modules/golden-path/provenance.ts';
import type { Dossier, Economics, Submission } from '../../../src/modules/golden-path/golden-path.schemas.ts';

const counter = installIoCounter();
const env = process.env;
const app = new pg.Pool({ connectionString: env.BENCH_APP_URL, max: Number(env.BENCH_APP_POOL ?? 10) });
app.on('error', () => {});

interface WfInput {
  tenantId: string;
  submission: Submission;
}

/** One tenant-bound transaction, as tenantEm does it: BEGIN, set_config(app.tenant_id), work, COMMIT. */
async function tenantTx<T>(tenantId: string, fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
  const c = await app.connect();
  try {
    await c.query('begin');
    await c.query(`select set_config('app.tenant_id', $1, true)`, [tenantId]);
    const out = await fn(c);
    await c.query('commit');
    return out;
  } catch (e) {
    await c.query('rollback').catch(() => {});
    throw e;
  } finally {
    c.release();
  }
}

const partnerDossier = DBOS.registerStep(
  async (input: WfInput, runId: string): Promise<Dossier> => {
    const dossier = buildDossier(input.submission, new Date());
    await tenantTx(input.tenantId, (c) =>
      c.query(
        `insert into partner_dossiers (id, tenant_id, run_id, partner_name, country, completeness_score, content, created_at) values ($1, $2, $3, $4, $5, $6, $7, $8)`,
        [randomUUID(), input.tenantId, runId, dossier.profile.name, dossier.profile.country, dossier.facts.completeness_score, JSON.stringify(dossier), new Date()],
      ),
    );
    return dossier;
  },
  { name: 'partner-dossier' },
);

const economicsModel = DBOS.registerStep(
  async (input: WfInput, runId: string): Promise<Economics> => {
    const model = buildEconomics(input.submission.economics, input.submission.currency, new Date());
    await tenantTx(input.tenantId, (c) =>
      c.query(
        `insert into economics_models (id, tenant_id, run_id, currency, cost, payback_months, content, created_at) values ($1, $2, $3, $4, $5, $6, $7, $8)`,
        [randomUUID(), input.tenantId, runId, model.currency, model.cost, model.payback_months, JSON.stringify(model), new Date()],
      ),
    );
    return model;
  },
  { name: 'economics-model' },
);

const approvalPacket = DBOS.registerStep(
  async (input: WfInput, runId: string, econ: Economics) => {
    return tenantTx(input.tenantId, async (c) => {
      // The same read as ours (the tenant's policy row); the benchmark's tenants have none, so the defaults apply.
      await c.query(`select * from approval_policies where tenant_id = $1 limit 1`, [input.tenantId]);
      const loaded = defaultPolicy({ slaBSeconds: 86400, slaCSeconds: 259200 });
      const { cls, reasons, required, currencyMismatch } = classify(econ, loaded.policy, { payback: paybackRatio(input.submission.economics) });
      const applied = appliedPolicy(loaded);
      const now = new Date();
      const id = randomUUID();
      await c.query(
        `insert into approval_requests (id, tenant_id, run_id, approval_class, required_approvals, status, submitted_by, reasons, sla_deadline, decided_at, created_at, updated_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
        [id, input.tenantId, runId, cls, required, 'approved', 'bench', JSON.stringify(reasons), null, now, now, now],
      );
      await c.query(
        `insert into approval_decisions (id, tenant_id, approval_request_id, approver, decision, kind, comment, created_at) values ($1, $2, $3, $4, $5, $6, $7, $8)`,
        [randomUUID(), input.tenantId, id, 'system', 'approve', 'system', 'class A: approved automatically by policy', now],
      );
      return {
        approval_request_id: id,
        approval_class: cls,
        reasons,
        required_approvals: required,
        sla_deadline: null,
        outcome: 'approved' as const,
        decisions: [{ decided_by: 'system', decision: 'approve', comment: 'class A: approved automatically by policy', decided_at: now.toISOString(), kind: 'system' }],
        policy: applied,
        currency_mismatch: currencyMismatch,
        provenance: provenance('policy', CLASSIFIED_EXACTLY, packetBasis(econ, applied), now),
      };
    });
  },
  { name: 'approval-packet' },
);

const evidencePack = DBOS.registerStep(
  async (input: WfInput, runId: string, outputs: { dossier: Dossier; econ: Economics; approval: unknown }) => {
    const content = { schema: 'dealix.evidence-pack/v1', run: { id: runId, tenant_id: input.tenantId }, submission: input.submission, ...outputs, outcome: 'approved' };
    const sha256 = evidenceHash(content);
    const id = randomUUID();
    await tenantTx(input.tenantId, (c) =>
      c.query(`insert into evidence_packs (id, tenant_id, run_id, content, sha256, created_at) values ($1, $2, $3, $4, $5, $6)`, [id, input.tenantId, runId, JSON.stringify(content), sha256, new Date()]),
    );
    return { evidence_pack_id: id, sha256, outcome: 'approved', provenance: provenance('derived', 'rfc8785-sha256', { sha256 }, new Date()) };
  },
  { name: 'evidence-pack' },
);

const goldenPath = DBOS.registerWorkflow(
  async (input: WfInput) => {
    const runId = DBOS.workflowID!;
    const dossier = await partnerDossier(input, runId);
    const econ = await economicsModel(input, runId);
    const approval = await approvalPacket(input, runId, econ);
    return evidencePack(input, runId, { dossier, econ, approval });
  },
  { name: 'golden-path' },
);

DBOS.setConfig({
  name: 'dealix-bench-peer',
  applicationVersion: '1',
  systemDatabaseUrl: env.BENCH_DBOS_SYSTEM_URL!,
  systemDatabasePoolSize: Number(env.BENCH_DBOS_POOL ?? 20),
  logLevel: env.BENCH_DBOS_LOG_LEVEL ?? 'info',
});
await DBOS.launch();

const completions = new Completions();
const channel = childChannel({
  ...ioStats(counter),
  onRun(params) {
    const p = params as { total: number; inFlight: number; tenants: string[]; submission: Submission; maxMs?: number };
    const start = async (i: number) => {
      const handle = await DBOS.startWorkflow(goldenPath)({ tenantId: p.tenants[i % p.tenants.length]!, submission: p.submission });
      const id = handle.workflowID;
      handle.getResult().then(
        () => completions.feed([[id, nowMs()]]),
        (e: Error) => console.error(`workflow ${id} failed: ${e.message}`),
      );
      return id;
    };
    closedLoop({ total: p.total, inFlight: p.inFlight, start, completions, ...(p.maxMs ? { maxMs: p.maxMs } : {}) }).then(
      (result) => channel.result({ ok: true, result }),
      (e: Error) => channel.result({ ok: false, error: e.message }),
    );
  },
});

process.once('SIGTERM', () => {
  void DBOS.shutdown()
    .then(() => app.end())
    .finally(() => process.exit(0));
});
channel.ready({ pid: process.pid });
