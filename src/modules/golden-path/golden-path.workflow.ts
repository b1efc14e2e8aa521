import { defineWorkflow, type StepDef, type WorkflowDef } from '../../platform/durable/workflow.ts';
import { submissionSchema, type ApprovalPacket } from './golden-path.schemas.ts';
import { partnerDossierStep } from './partner-dossier.step.ts';
import { economicsModelStep } from './economics-model.step.ts';

export const GOLDEN_PATH = 'golden-path';
export const GOLDEN_PATH_QUEUE = 'golden-path';

/**
 * The partner tier-1 verification, read top to bottom:
 *   1 partner-dossier → 2 economics-model → 3 approval-packet (may wait for humans / SLA) → 4 evidence-pack.
 * The run ends `completed` when approved, `rejected` when rejected (both with an evidence pack), or
 * `approval_expired` when the SLA passes undecided.
 */
export function goldenPathWorkflow(
  approvalPacket: StepDef,
  evidencePack: StepDef,
  repairWaiting: WorkflowDef['repairWaiting'],
  waitingJobId?: WorkflowDef['waitingJobId'],
  onFailed?: WorkflowDef['onFailed'],
): WorkflowDef {
  return defineWorkflow({
    name: GOLDEN_PATH,
    version: 1,
    tag: 'gp',
    queue: GOLDEN_PATH_QUEUE,
    input: submissionSchema,
    steps: [partnerDossierStep, economicsModelStep, approvalPacket, evidencePack],
    // The `run.completed` / `run.rejected` webhook event names the run's evidence pack and its hash
    // (docs/api.md, *Webhooks*): a receiver that keeps the hash can verify the pack later on its own.
    eventData: (output) => {
      const { evidence_pack_id: id, sha256 } = (output ?? {}) as { evidence_pack_id?: unknown; sha256?: unknown };
      if (typeof id !== 'string') return {};
      return { evidence_pack_id: id, ...(typeof sha256 === 'string' ? { evidence_sha256: sha256 } : {}) };
    },
    finish(outputs) {
      const approval = outputs['approval-packet'] as ApprovalPacket;
      return { status: approval.outcome === 'rejected' ? 'rejected' : 'completed', output: outputs['evidence-pack'] };
    },
    ...(repairWaiting ? { repairWaiting } : {}),
    ...(waitingJobId ? { waitingJobId } : {}),
    ...(onFailed ? { onFailed } : {}),
  });
}
