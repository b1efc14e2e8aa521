import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import type { EntityManager } from '@mikro-orm/postgresql';
import { defineStep, type StepContext } from '../../platform/durable/workflow.ts';
import { ConflictError, PermanentError } from '../../platform/errors/app-error.ts';
import { minorDigits, roundMinor } from '../../platform/money/minor-units.ts';
import { archivedSchema, frozenSchema, offboardingSubmission, settlementSchema, type OffboardingSubmission, type Settlement } from './partner-offboarding.schemas.ts';


/** Pure: the balances netted per currency, to its minor unit, sorted by currency. */
export function settle(balances: OffboardingSubmission['balances']): Settlement['lines'] {
  const net = new Map<string, number>();
  for (const b of balances) net.set(b.currency, (net.get(b.currency) ?? 0) + b.amount);
  return [...net]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([currency, sum]) => {
      const n = roundMinor(sum, minorDigits(currency));
      return { currency, net: n, direction: n > 0 ? 'pay_partner' : n < 0 ? 'collect_from_partner' : 'none' };
    });
}

/**
 * Moves the run's offboarding record from `from` to the next status, in the step's transaction (so it
 * commits with the step's checkpoint). A record not in `from` means another execution of the step got
 * there first: a plain (retryable) error, whose retry reads the run and replays that execution's checkpoint.
 * An `abandoned` record (the migration's, its partner offboarded by another run) fails the run for good.
 */
async function advance(em: EntityManager, ctx: StepContext, from: string, set: string, params: unknown[]): Promise<string> {
  const rows = await em.execute<{ id: string }[]>(
    `update partner_offboardings set ${set} where tenant_id = ? and run_id = ? and status = ? returning id`,
    [...params, ctx.run.tenantId, ctx.run.id, from],
  );
  if (!rows[0]) {
    const [own] = await em.execute<{ partner_reference: string; status: string }[]>(`select partner_reference, status from partner_offboardings where tenant_id = ? and run_id = ?`, [ctx.run.tenantId, ctx.run.id]);
    if (own?.status === 'abandoned') {
      const [holder] = await em.execute<Holder[]>(HOLDER, [ctx.run.tenantId, own.partner_reference]);
      throw holder ? new PartnerAlreadyOffboardedError(own.partner_reference, holder) : new PermanentError('partner_already_offboarded', `Run ${ctx.run.id}'s offboarding of partner ${own.partner_reference} was abandoned.`);
    }
    throw new Error(`offboarding of run ${ctx.run.id} is not ${from}`);
  }
  return rows[0].id;
}

/**
 * Inserts the run's offboarding record, frozen, unless another record of the partner holds it (the
 * partial unique key `(tenant_id, partner_reference) where status <> 'abandoned'`): then nothing is
 * inserted and no row is returned. `on conflict do nothing` waits for an insert of the partner in flight
 * and never raises a unique violation (which the executor takes for a lost checkpoint race).
 */
const CLAIM = `insert into partner_offboardings (id, tenant_id, run_id, partner_reference, partner_name, reason, status, frozen_at)
  values (?, ?, ?, ?, ?, ?, 'frozen', ?)
  on conflict (tenant_id, partner_reference) where status <> 'abandoned' do nothing returning id`;

/** The record of the partner that is not abandoned, with its run's status (null: deleted by run retention). */
const LIVE_RECORD = `select o.id, o.run_id, o.status, r.status as run_status from partner_offboardings o
  left join durable_runs r on r.tenant_id = o.tenant_id and r.id = o.run_id
  where o.tenant_id = ? and o.partner_reference = ? and o.status <> 'abandoned'`;
/** That record, locked: step 1 may give it up (abandoned) and claim the partner in its place. */
const HOLDER = `${LIVE_RECORD} for update of o`;

type Holder = { id: string; run_id: string; status: string; run_status: string | null };

/** Whether the record holds its partner: archived, or its run neither cancelled nor deleted (such a record is given up). */
const holdsPartner = (h: Holder) => h.status === 'archived' || (h.run_status !== null && h.run_status !== 'cancelled');

function heldBy(reference: string, holder: Holder): string {
  const what = holder.status === 'archived' ? 'was offboarded' : `is being offboarded (its run is ${holder.run_status}${holder.run_status === 'failed' ? ': retry that run' : ''})`;
  return `Partner ${reference} ${what} by run ${holder.run_id}.`;
}

/** The partner is another offboarding's: this run fails for good (at step 1), having frozen and settled nothing. */
class PartnerAlreadyOffboardedError extends PermanentError {
  constructor(reference: string, holder: Holder) {
    super('partner_already_offboarded', heldBy(reference, holder));
  }
}

/**
 * The workflow's submission guard (`admitSubmission`): a submission of a partner that another
 * offboarding of the tenant holds is refused, 409 naming that run and its status, and starts no run
 * (rather than one that fails at freeze-partner). A plain read in the submission's transaction, under
 * the tenant's RLS: it locks nothing, so it never holds up the holder's own steps. It sees records,
 * which step 1 writes: two submissions at once, or a second one while the first's run is still pending
 * in the queue, both pass it, and freeze-partner's claim decides between their runs.
 */
export async function refuseHeldPartner(em: EntityManager, submission: OffboardingSubmission, run: { tenantId: string }): Promise<void> {
  const { reference } = submission.partner;
  const [holder] = await em.execute<Holder[]>(LIVE_RECORD, [run.tenantId, reference]);
  if (!holder || !holdsPartner(holder)) return;
  throw new ConflictError('partner_already_offboarded', heldBy(reference, holder), {
    extensions: { run_id: holder.run_id, run_status: holder.run_status, offboarding_status: holder.status },
  });
}

/**
 * Step 1: the offboarding record, created frozen; the partner is this run's to offboard from here on.
 * (The record is all "frozen" means: the golden path knows no partner reference, so its runs for the
 * partner are neither stopped nor refused — docs/api.md.)
 */
export const freezePartnerStep = defineStep({
  name: 'freeze-partner',
  input: z.object({ submission: offboardingSubmission }),
  output: frozenSchema,
  // Its writes through ctx.em are its only effects: it may run from what a new run's job carries (ADR 0004).
  effectsInTransaction: true,
  async run({ submission }, ctx) {
    const id = randomUUID();
    const frozenAt = new Date();
    const { reference, name } = submission.partner;
    const claim = () => ctx.em.execute<{ id: string }[]>(CLAIM, [id, ctx.run.tenantId, ctx.run.id, reference, name, submission.reason, frozenAt]);
    if (!(await claim())[0]) {
      const [holder] = await ctx.em.execute<Holder[]>(HOLDER, [ctx.run.tenantId, reference]);
      // Gone since the claim, or this run's own (another execution of the step got there first): a
      // plain (retryable) error, whose retry reads the run and goes on from what is stored.
      if (!holder || holder.run_id === ctx.run.id) throw new Error(`partner ${reference}: its offboarding record changed under run ${ctx.run.id}'s freeze`);
      // A run cancelled before it archived (or deleted by retention) holds nothing: its record is given up.
      if (holdsPartner(holder)) throw new PartnerAlreadyOffboardedError(reference, holder);
      await ctx.em.execute(`update partner_offboardings set status = 'abandoned' where tenant_id = ? and id = ?`, [ctx.run.tenantId, holder.id], 'run');
      if (!(await claim())[0]) throw new Error(`partner ${reference}: claimed by another offboarding during run ${ctx.run.id}'s freeze`);
    }
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
