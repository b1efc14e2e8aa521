import { defineEntity, p } from '@mikro-orm/core';
import { tenantIdProperty, tenantIsolationPolicy } from '../../platform/db/tenant-owned.ts';

/**
 * The hash an evidence pack had when it was written, by the pack insert's trigger (in the same
 * statement, so whatever release's worker wrote the pack: evidence-pack.entity.ts), kept apart from the pack: `/verify` compares the pack with it, so content rewritten together with the
 * pack's own hash shows. Append-only (roles.ts), and not the run's execution state: it outlives the
 * run's checkpoints when run retention deletes them (ADR 0011). One per pack, keyed by (tenant, run); its
 * id is the pack's, read with that key by `/verify` and not indexed on its own (docs/performance-history.md, session 24).
 */
export const EvidenceSealRow = defineEntity({
  name: 'EvidenceSeal',
  tableName: 'evidence_seals',
  properties: {
    id: p.uuid(),
    tenantId: tenantIdProperty().primary(),
    runId: p.uuid().primary(),
    sha256: p.string().length(64),
    createdAt: p.datetime(),
  },
  rowLevelSecurity: 'force',
  policies: [tenantIsolationPolicy('evidence_seals')],
});
