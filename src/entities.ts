import { IdempotencyKey } from './platform/idempotency/idempotency-key.entity.ts';
import { DurableRun } from './platform/durable/durable-run.entity.ts';
import { DurableCheckpoint } from './platform/durable/durable-checkpoint.entity.ts';
import { EconomicsModelRow, PartnerDossierRow } from './modules/golden-path/golden-path.entities.ts';
import { ApprovalDecision, ApprovalPolicyChange, ApprovalPolicyRow, ApprovalPolicyVersionRow, ApprovalRequest } from './modules/approvals/approval.entities.ts';
import { EvidencePackRow } from './modules/evidence/evidence-pack.entity.ts';
import { EvidenceSealRow } from './modules/evidence/evidence-seal.entity.ts';
import { WebhookDelivery, WebhookEndpoint } from './platform/webhooks/webhook.entities.ts';
import { TenantLimitsRow } from './platform/limits/tenant-limits.entity.ts';
import { TokenRevocationRow } from './platform/tenancy/token-revocation.entity.ts';
import { TokenAgeLimitRow } from './platform/tenancy/token-age-limit.entity.ts';
import { RunRetentionDecisionRow } from './platform/queue/run-retention-decision.entity.ts';
import { PartnerOffboardingClaimRow, PartnerOffboardingRow } from './modules/partner-offboarding/partner-offboarding.entities.ts';

/** Every entity of the application, platform and modules; the ORM, migrations and RLS suite read this list. */
export const entities = [
  IdempotencyKey,
  DurableRun,
  DurableCheckpoint,
  PartnerDossierRow,
  EconomicsModelRow,
  ApprovalRequest,
  ApprovalDecision,
  ApprovalPolicyRow,
  ApprovalPolicyChange,
  ApprovalPolicyVersionRow,
  EvidencePackRow,
  EvidenceSealRow,
  PartnerOffboardingRow,
  PartnerOffboardingClaimRow,
  WebhookEndpoint,
  WebhookDelivery,
  TenantLimitsRow,
  RunRetentionDecisionRow,
  TokenRevocationRow,
  TokenAgeLimitRow,
];
