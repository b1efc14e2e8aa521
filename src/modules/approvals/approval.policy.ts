import type { EntityManager } from '@mikro-orm/postgresql';
import type { Economics } from '../golden-path/golden-path.schemas.ts';
import { ApprovalPolicyRow } from './approval.entities.ts';

export interface ApprovalPolicy {
  classAMaxCost: number;
  classAMaxPaybackMonths: number;
  classCMinCost: number;
  classCMinPaybackMonths: number;
  slaBSeconds: number;
  slaCSeconds: number;
}

export const DEFAULT_POLICY: Omit<ApprovalPolicy, 'slaBSeconds' | 'slaCSeconds'> = {
  classAMaxCost: 50_000,
  classAMaxPaybackMonths: 6,
  classCMinCost: 250_000,
  classCMinPaybackMonths: 24,
};

export type ApprovalClass = 'A' | 'B' | 'C';

/**
 * A: cost <= 50,000 and payback <= 6 months (approved automatically, a system decision).
 * C: cost > 250,000, payback > 24 months, or no profit. B: everything else.
 */
export function classify(econ: Pick<Economics, 'cost' | 'payback_months'>, policy: ApprovalPolicy): { cls: ApprovalClass; reasons: string[]; required: number; slaSeconds: number | null } {
  const reasons: string[] = [];
  if (econ.payback_months === null) reasons.push('no gross profit: payback never reached');
  else if (econ.payback_months > policy.classCMinPaybackMonths) reasons.push(`payback ${econ.payback_months} > ${policy.classCMinPaybackMonths} months`);
  if (econ.cost > policy.classCMinCost) reasons.push(`cost ${econ.cost} > ${policy.classCMinCost}`);
  if (reasons.length) return { cls: 'C', reasons, required: 2, slaSeconds: policy.slaCSeconds };
  if (econ.cost <= policy.classAMaxCost && econ.payback_months !== null && econ.payback_months <= policy.classAMaxPaybackMonths) {
    return { cls: 'A', reasons: [`cost ${econ.cost} <= ${policy.classAMaxCost} and payback ${econ.payback_months} <= ${policy.classAMaxPaybackMonths} months`], required: 0, slaSeconds: null };
  }
  return { cls: 'B', reasons: ['between the automatic and the escalated thresholds'], required: 1, slaSeconds: policy.slaBSeconds };
}

/** The tenant's policy (RLS-scoped read), else the defaults with the configured SLAs. */
export async function loadPolicy(em: EntityManager, tenantId: string, defaults: { slaBSeconds: number; slaCSeconds: number }): Promise<ApprovalPolicy> {
  const row = await em.findOne(ApprovalPolicyRow, { tenantId });
  if (!row) return { ...DEFAULT_POLICY, ...defaults };
  return {
    classAMaxCost: Number(row.classAMaxCost),
    classAMaxPaybackMonths: Number(row.classAMaxPaybackMonths),
    classCMinCost: Number(row.classCMinCost),
    classCMinPaybackMonths: Number(row.classCMinPaybackMonths),
    slaBSeconds: row.slaBSeconds,
    slaCSeconds: row.slaCSeconds,
  };
}
