import { defineEntity, p } from '@mikro-orm/core';
import { tenantIdProperty, tenantIsolationPolicy } from '../../platform/db/tenant-owned.ts';
import type { EvidencePackContent } from '../golden-path/golden-path.schemas.ts';

/** Step 4's output: the evidence pack, its canonical JSON content and SHA-256. */
export const EvidencePackRow = defineEntity({
  name: 'EvidencePack',
  tableName: 'evidence_packs',
  properties: {
    id: p.uuid().primary(),
    tenantId: tenantIdProperty(),
    runId: p.uuid(),
    content: p.json<EvidencePackContent>(),
    sha256: p.string().length(64),
    createdAt: p.datetime(),
  },
  uniques: [{ name: 'evidence_packs_tenant_run_unique', properties: ['tenantId', 'runId'] }],
  rowLevelSecurity: 'force',
  policies: [tenantIsolationPolicy('evidence_packs')],
});
