import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { defineStep } from '../../platform/durable/workflow.ts';
import { approvalPacketSchema, dossierSchema, economicsSchema, evidenceSchema, submissionSchema, type EvidencePackContent } from '../golden-path/golden-path.schemas.ts';
import { provenance } from '../golden-path/provenance.ts';
import { EvidencePackRow } from './evidence-pack.entity.ts';
import { EVIDENCE_PACK_STEP, evidenceHash } from './evidence.service.ts';
import { insertRow } from '../../platform/db/insert-row.ts';

/** Step 4: everything the decision rests on, as canonical JSON with its SHA-256, verifiable later. */
export const evidencePackStep = defineStep({
  name: EVIDENCE_PACK_STEP,
  input: z.object({
    submission: submissionSchema,
    outputs: z.object({
      'partner-dossier': dossierSchema,
      'economics-model': economicsSchema,
      'approval-packet': approvalPacketSchema.refine((a) => a.outcome === 'approved' || a.outcome === 'rejected', 'the approval must be decided'),
    }),
  }),
  output: evidenceSchema,
  async run({ submission, outputs }, ctx) {
    const approval = outputs['approval-packet'];
    const outcome = approval.outcome as 'approved' | 'rejected';
    const content: EvidencePackContent = {
      schema: 'dealix.evidence-pack/v1',
      run: {
        id: ctx.run.id,
        tenant_id: ctx.run.tenantId,
        workflow: `${ctx.run.workflow}@v${ctx.run.workflowVersion}`,
        correlation_id: ctx.run.correlationId,
        submitted_by: ctx.run.principal,
        submitted_at: ctx.run.createdAt.toISOString(),
      },
      submission,
      partner_dossier: outputs['partner-dossier'],
      economics_model: outputs['economics-model'],
      approval_packet: approval,
      outcome,
    };
    const sha256 = evidenceHash(content);
    const id = randomUUID();
    // The database's time (ctx.now), never this worker's clock: a pack created before its run, or before
    // the approval it records, is what a worker whose clock is off wrote. Not in the hashed content.
    const createdAt = ctx.now;
    // Its seal (the hash kept apart, what /verify compares with, outliving the run's checkpoints) is written
    // by the insert's trigger, in the same statement (evidence-pack.entity.ts, ADR 0011).
    await insertRow(ctx.em, EvidencePackRow, { id, tenantId: ctx.run.tenantId, runId: ctx.run.id, content, sha256, createdAt });
    return { evidence_pack_id: id, sha256, outcome, provenance: provenance('derived', 'rfc8785-sha256', { sha256 }, createdAt) };
  },
});
