import type { MikroORM } from '../platform/db/orm.ts';
import { systemEm } from '../platform/db/tenant-em.ts';
import { WorkflowRegistry, versionLabel } from '../platform/durable/registry.ts';
import type { WorkflowDef } from '../platform/durable/workflow.ts';
import { fail, pass, type ReadinessRow } from './readiness.types.ts';

/**
 * `workflow-versions`: every active run (pending, running, waiting) of a workflow this release
 * registers is of a version it registers too. A release that dropped a version while runs of it are
 * in flight would leave them to no worker: their jobs are put off again and again, never failed, but
 * never finished either (ADR 0008). Runs of workflow names the release does not register at all
 * (another deployment's) are named in the reason, not failed. Counted as the system role (ADR 0003).
 */
export async function workflowVersionsRow(orm: MikroORM, workflows: WorkflowDef[]): Promise<ReadinessRow> {
  const registry = new WorkflowRegistry(workflows);
  const active = await systemEm(orm).transactional((tx) =>
    tx.execute<{ workflow: string; workflow_version: number; n: string }[]>(
      `select workflow, workflow_version, count(*) as n from durable_runs where status in ('pending', 'running', 'waiting')
        group by workflow, workflow_version order by workflow, workflow_version`,
    ),
  );
  const list = (rows: typeof active) => rows.map((r) => `${versionLabel(r.workflow, r.workflow_version)} (${r.n})`).join(', ');
  const missing = active.filter((r) => registry.current(r.workflow) && !registry.get(r.workflow, r.workflow_version));
  const foreign = active.filter((r) => !registry.current(r.workflow));
  if (missing.length) {
    return fail(
      'workflow-versions',
      `active runs of versions this release does not register: ${list(missing)}; keep each version registered until its runs have ended (docs/runtime.md, "Changing a workflow")`,
    );
  }
  const ofOthers = foreign.length ? `; active runs of workflows this release does not register at all (another deployment's?): ${list(foreign)}` : '';
  return pass('workflow-versions', `registers ${registry.labels().join(', ')}; active runs: ${list(active.filter((r) => registry.current(r.workflow))) || 'none'}${ofOthers}`);
}
