import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import type { EntityManager } from '@mikro-orm/postgresql';
import { defineStep, type StepContext } from '../../platform/durable/workflow.ts';
import { insertRow } from '../../platform/db/insert-row.ts';
import { PartnerOffboardingRow } from './partner-offboarding.entities.ts';
import { archivedSchema, frozenSchema, offboardingSubmission, settlementSchema, type OffboardingSubmission, type Settlement } from './partner-offboarding.schemas.ts';

const round2 = (n: number) => Math.round(n * 100) / 100;

/** Pure: the balances netted per currency, sorted by currency. */
export function settle(balances: OffboardingSubmission['balances']): Settlement['lines'] {
  const net = new Map<string, number>();
  for (const b of balances) net.set(b.currency, (net.get(b.currency) ?? 0) + b.amount);
  return [...net]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([currency, sum]) => {
      const n = round2(sum);
      return { currency, net: n, direction: n > 0 ? 'pay_partner' : n < 0 ? 'collect_from_partner' : 'none' };
    });
}

/**
 * Moves the run's offboarding record from `from` to the next status, in the step's transaction (so it
 * commits with the step's checkpoint). A record not in `from` means another execution of the step got
 * there first: a plain (retryable) error, whose retry reads the run and replays that execution's checkpoint.
 */
async function advance(em: EntityManager, ctx: StepContext, from: string, set: string, params: unknown[]): Promise<string> {
  const rows = await em.execute<{ id: string }[]>(
    `update partner_offboardings set ${set} where tenant_id = ? and run_id = ? and status = ? returning id`,
    [...params, ctx.run.tenantId, ctx.run.id, from],
  );
  if (!rows[0]) throw new Error(`offboarding of run ${ctx.run.id} is not ${from}`);
  return rows[0].id;
}

/** Step 1: the offboarding record, created frozen (the partner takes no new business from here on). */
export const freezePartnerStep = defineStep({
  name: 'freeze-partner',
  input: z.object({ submission: offboardingSubmission }),
  output: frozenSchema,
  // One insert in its transaction and nothing else: it may run from what a new run's job carries (ADR 0004).
  effectsInTransaction: true,
  async run({ submission }, ctx) {
    const id = randomUUID();
    const frozenAt = new Date();
    await insertRow(ctx.em, PartnerOffboardingRow, {
      id,
      tenantId: ctx.run.tenantId,
      runId: ctx.run.id,
      partnerReference: submission.partner.reference,
      partnerName: submission.partner.name,
      reason: submission.reason,
      status: 'frozen',
      settlement: null,
      frozenAt,
    });
    return { offboarding_id: id, frozen_at: frozenAt.toISOString() };
  },
});

/** Step 2: the open balances netted per currency, recorded on the offboarding. */
export const settleBalancesStep = defineStep({
  name: 'settle-balances',
  input: z.object({ submission: offboardingSubmission }),
  output: settlementSchema,
  async run({ submission }, ctx) {
    const settlement: Settlement = { lines: settle(submission.balances), settled_at: new Date().toISOString() };
    await advance(ctx.em, ctx, 'frozen', `status = 'settled', settlement = ?, settled_at = ?`, [JSON.stringify(settlement), settlement.settled_at]);
    return settlement;
  },
});

/** Step 3: the record archived; the run's output. */
export const archiveRecordStep = defineStep({
  name: 'archive-record',
  input: z.object({ outputs: z.object({ 'settle-balances': settlementSchema }) }),
  output: archivedSchema,
  async run(_input, ctx) {
    const archivedAt = new Date().toISOString();
    const id = await advance(ctx.em, ctx, 'settled', `status = 'archived', archived_at = ?`, [archivedAt]);
    return { offboarding_id: id, archived_at: archivedAt };
  },
});
