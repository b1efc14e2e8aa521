import pg from 'pg';
import type { Submission } from './client.ts';

/**
 * The end-of-run invariants, read from PostgreSQL (the source of truth) as the superuser of the run's
 * own database: every accepted run reached its expected terminal state, exactly one completed
 * checkpoint per (run, sequence_num), exactly one domain row per step, and every idempotent retry
 * of a submission was answered with the same run.
 */

export const DOMAIN_TABLES = ['partner_dossiers', 'economics_models', 'approval_requests', 'evidence_packs'] as const;
const TERMINAL = ['completed', 'rejected', 'approval_expired', 'failed', 'cancelled'];

export interface InvariantReport {
  submitted: number;
  accepted: number;
  /** Submissions the client gave up on (never got a 202). */
  notAccepted: number;
  runsInDb: number;
  byStatus: Record<string, number>;
  /** Accepted runs that are missing, not terminal, or in the wrong terminal state. */
  invalidTerminal: string[];
  stuck: number;
  checkpoints: { completed: number; missing: number; duplicated: number };
  domainRows: Record<string, { rows: number; missing: number; duplicated: number }>;
  decisions: { missing: number; duplicated: number };
  idempotency: { retries: number; mismatched: number };
  /** Runs in the database that no submission was given: a second run for one submission. */
  unexpectedRuns: number;
  lost: number;
  duplicated: number;
  ok: boolean;
}

export async function checkInvariants(adminDbUrl: string, subs: Submission[]): Promise<InvariantReport> {
  const db = new pg.Client({ connectionString: adminDbUrl });
  await db.connect();
  try {
    const runs = (await db.query<{ id: string; status: string; step_count: number }>(`select id, status, step_count from durable_runs`)).rows;
    const byId = new Map(runs.map((r) => [r.id, r]));
    const accepted = subs.filter((s) => s.runIds.length > 0);
    const expectedIds = new Set(accepted.map((s) => s.runIds[0]!));
    const mismatched = subs.filter((s) => new Set(s.runIds).size > 1).length;

    const invalidTerminal: string[] = [];
    for (const s of accepted) {
      const run = byId.get(s.runIds[0]!);
      // Class A is approved by policy and B by the chaos approver: both must end completed.
      if (!run || run.status !== 'completed') invalidTerminal.push(`${s.runIds[0]} (${s.cls}): ${run?.status ?? 'missing'}`);
    }
    const byStatus: Record<string, number> = {};
    for (const r of runs) byStatus[r.status] = (byStatus[r.status] ?? 0) + 1;

    const cps = (
      await db.query<{ run_id: string; seq: number; completed: number }>(
        `select run_id, sequence_num as seq, count(*) filter (where status = 'completed')::int as completed from durable_checkpoints group by run_id, sequence_num`,
      )
    ).rows;
    const cpByRun = new Map<string, Map<number, number>>();
    for (const c of cps) {
      if (!cpByRun.has(c.run_id)) cpByRun.set(c.run_id, new Map());
      cpByRun.get(c.run_id)!.set(c.seq, c.completed);
    }
    const checkpoints = { completed: 0, missing: 0, duplicated: 0 };
    for (const r of runs) {
      const m = cpByRun.get(r.id) ?? new Map<number, number>();
      for (let seq = 1; seq <= r.step_count; seq++) {
        const n = m.get(seq) ?? 0;
        checkpoints.completed += Math.min(n, 1);
        if (n === 0) checkpoints.missing++;
        if (n > 1) checkpoints.duplicated += n - 1;
      }
    }

    const domainRows: InvariantReport['domainRows'] = {};
    for (const t of DOMAIN_TABLES) {
      const rows = (await db.query<{ run_id: string; n: number }>(`select run_id, count(*)::int as n from ${t} group by run_id`)).rows;
      const per = new Map(rows.map((r) => [r.run_id, r.n]));
      const stat = { rows: rows.reduce((a, r) => a + r.n, 0), missing: 0, duplicated: 0 };
      for (const r of runs) {
        const n = per.get(r.id) ?? 0;
        if (n === 0) stat.missing++;
        if (n > 1) stat.duplicated += n - 1;
      }
      for (const [runId, n] of per) if (!byId.has(runId)) stat.duplicated += n;
      domainRows[t] = stat;
    }

    // One decision per approval request: the system's for class A, the chaos approver's for B.
    const dec = (
      await db.query<{ n: number }>(`select count(d.id)::int as n from approval_requests a left join approval_decisions d on d.approval_request_id = a.id group by a.id`)
    ).rows;
    const decisions = { missing: dec.filter((d) => d.n === 0).length, duplicated: dec.reduce((a, d) => a + Math.max(0, d.n - 1), 0) };

    const unexpectedRuns = runs.filter((r) => !expectedIds.has(r.id)).length;
    const stuck = runs.filter((r) => !TERMINAL.includes(r.status)).length;
    const notAccepted = subs.length - accepted.length;
    const lost = notAccepted + invalidTerminal.length + checkpoints.missing + Object.values(domainRows).reduce((a, d) => a + d.missing, 0) + decisions.missing;
    const duplicated =
      unexpectedRuns + mismatched + checkpoints.duplicated + Object.values(domainRows).reduce((a, d) => a + d.duplicated, 0) + decisions.duplicated;
    return {
      submitted: subs.length,
      accepted: accepted.length,
      notAccepted,
      runsInDb: runs.length,
      byStatus,
      invalidTerminal,
      stuck,
      checkpoints,
      domainRows,
      decisions,
      idempotency: { retries: subs.reduce((a, s) => a + s.runIds.length - 1, 0), mismatched },
      unexpectedRuns,
      lost,
      duplicated,
      ok: lost === 0 && duplicated === 0 && stuck === 0,
    };
  } finally {
    await db.end();
  }
}

/** Runs not yet in a terminal state (for the drain wait). */
export async function countActive(db: pg.Pool): Promise<number> {
  const { rows } = await db.query<{ n: number }>(`select count(*)::int as n from durable_runs where status in ('pending', 'running', 'waiting')`);
  return rows[0]!.n;
}
