import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import type { EntityManager } from '@mikro-orm/postgresql';
import { defineStep, type StepContext, type SubmissionRun } from '../../platform/durable/workflow.ts';
import { notRetryableBecause } from '../../platform/durable/retryable.ts';
import type { CheckpointStatus } from '../../platform/durable/durable-checkpoint.entity.ts';
import { ConflictError, PermanentError } from '../../platform/errors/app-error.ts';
import { minorDigits, sumMinor } from '../../platform/money/minor-units.ts';
import { archivedSchema, frozenSchema, offboardingSubmission, settlementSchema, type OffboardingSubmission, type Settlement } from './partner-offboarding.schemas.ts';


/**
 * Pure: the balances netted per currency, to its minor unit, sorted by currency code: each sum exact (the
 * amounts as written), rounded once. By code units, never localeCompare: that follows the worker's ICU
 * locale (LANG=et_EE.UTF-8 sorts ZAR before TRY, lt_LT puts YER first), so one run would settle in
 * another order per host.
 */
export function settle(balances: OffboardingSubmission['balances']): Settlement['lines'] {
  const amounts = new Map<string, number[]>();
  for (const b of balances) amounts.set(b.currency, (amounts.get(b.currency) ?? []).concat(b.amount));
  return [...amounts]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([currency, of]) => {
      const n = sumMinor(of, minorDigits(currency));
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
      const [holder] = await em.execute<Holder[]>(HOLDER, liveRecordParams(ctx.run.tenantId, own.partner_reference));
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

/**
 * `run_status` and `run_version`: the status and workflow version of the run `o.run_id` names (both
 * null: deleted by run retention). Two sub-selects by (tenant, id), each naming the tenant as a value
 * (one parameter each): a join on `r.tenant_id = o.tenant_id`, or a lateral one, was planned, generic,
 * as a walk of the tenant's runs (tenant-scoped-queries.test.ts).
 */
const RUN_OF = (o: string) => `(select r.status from durable_runs r where r.tenant_id = ? and r.id = ${o}.run_id) as run_status,
    (select r.workflow_version from durable_runs r where r.tenant_id = ? and r.id = ${o}.run_id) as run_version`;

/**
 * The record of the partner that is not abandoned, with its run's status and version (null: deleted
 * by run retention). Parameters: liveRecordParams.
 */
const LIVE_RECORD = `select o.id, o.run_id, o.status, ${RUN_OF('o')}
  from partner_offboardings o where o.tenant_id = ? and o.partner_reference = ? and o.status <> 'abandoned'`;
const liveRecordParams = (tenantId: string, reference: string) => [tenantId, tenantId, tenantId, reference];
/** That record, locked: step 1 may give it up (abandoned) and claim the partner in its place. */
const HOLDER = `${LIVE_RECORD} for update of o`;

type Holder = { id: string; run_id: string; status: string; run_status: string | null; run_version: number | null };
/** Who holds a partner, as a 409 names it: the run, its status, its record's (null: not frozen yet); and the run's workflow version. */
type Held = { run_id: string; run_status: string | null; offboarding_status: string | null; run_version: number | null };
const heldOf = (h: Holder): Held => ({ run_id: h.run_id, run_status: h.run_status, offboarding_status: h.status, run_version: h.run_version });

/**
 * A failed run's status, step count and checkpoints, as DurableRuntime.retry judges them (no row: deleted by
 * run retention since it was read). By the run's key and the checkpoints' (tenant, run), the tenant
 * and the run named as values. The status read again in the same statement: a run no longer failed was
 * retried since it was read, and its checkpoints say nothing of a retry (all completed: it ran to the end).
 */
const RETRY_STATE = `select r.status, r.step_count, coalesce((select json_agg(json_build_object('sequence_num', c.sequence_num, 'step_name', c.step_name, 'status', c.status, 'has_output', c.output is not null))
    from durable_checkpoints c where c.tenant_id = ? and c.run_id = ?), '[]'::json) as checkpoints
  from durable_runs r where r.tenant_id = ? and r.id = ?`;
type RetryState = { status: string; step_count: number; checkpoints: Array<{ sequence_num: number; step_name: string; status: CheckpointStatus; has_output: boolean }> };

/**
 * Whether a run holds its partner: its record archived, or the run neither cancelled nor deleted (by
 * run retention), nor its record abandoned, nor failed for good — a failed run whose retry is refused
 * for ever: on a workflow version declared retired (409 workflow_version_retired, ADR 0008), or none
 * of whose steps may run again (409 run_not_retryable, ADR 0009: read here, one statement more, only
 * for a failed run whose version is not retired; its checkpoints do not change while it stays failed).
 * A failed run that may be retried holds it (retry that run: accepted, or put off with 503 where its
 * version is merely not registered), and so does one still `pending` or `running` whose record is not
 * written yet. A record or claim of a run that holds nothing is given up. `retired`: the process's
 * WORKFLOW_VERSIONS_RETIRED, for this workflow.
 */
async function holdsPartner(em: EntityManager, tenantId: string, h: Held, retired: (version: number) => boolean): Promise<boolean> {
  if (h.offboarding_status === 'archived') return true;
  if (h.run_status === null || h.run_status === 'cancelled' || h.offboarding_status === 'abandoned') return false;
  if (h.run_status !== 'failed') return true;
  if (h.run_version !== null && retired(h.run_version)) return false;
  const [state] = await em.execute<RetryState[]>(RETRY_STATE, [tenantId, h.run_id, tenantId, h.run_id]);
  if (state === undefined) return false;
  // Retried since the holder was read (its status and checkpoints are not locked here): it holds the
  // partner again, whatever its checkpoints now say — a run retried and run to the end has every step completed.
  if (state.status !== 'failed') return true;
  return notRetryableBecause(state.checkpoints, state.step_count) === undefined;
}

function heldBy(reference: string, holder: Held): string {
  const what = holder.offboarding_status === 'archived' ? 'was offboarded' : `is being offboarded (its run is ${holder.run_status}${holder.run_status === 'failed' ? ': retry that run' : ''})`;
  return `Partner ${reference} ${what} by run ${holder.run_id}.`;
}

/** The partner is another offboarding's: this run fails for good (at step 1), having frozen and settled nothing. */
class PartnerAlreadyOffboardedError extends PermanentError {
  constructor(reference: string, holder: Holder) {
    super('partner_already_offboarded', heldBy(reference, heldOf(holder)));
  }
}

/** The submission's refusal: 409 naming the run that holds the partner. Nothing of the submission is kept. */
function refusal(reference: string, holder: Held): ConflictError {
  const { run_id, run_status, offboarding_status } = holder;
  return new ConflictError('partner_already_offboarded', heldBy(reference, holder), { extensions: { run_id, run_status, offboarding_status } });
}

/**
 * The submission's first statement after its run's insert: the partner's live record (LIVE_RECORD,
 * `kind` 'record'), and the partner claimed for the new run (`kind` 'claimed', when no other run of
 * the tenant ever claimed it). One round trip. The claim's insert waits for another submission's claim
 * of the partner in flight, and then does nothing if that one committed (no unique violation raised).
 */
const RECORD_AND_CLAIM = `with rec as (${LIVE_RECORD}),
  claim as (insert into partner_offboarding_claims (id, tenant_id, partner_reference, run_id, claimed_at) values (?, ?, ?, ?, now())
    on conflict (tenant_id, partner_reference) do nothing returning run_id)
  select 'record' as kind, rec.run_id, rec.run_status, rec.status as offboarding_status, rec.run_version from rec
  union all
  select 'claimed' as kind, claim.run_id, null, null, null from claim`;

/** The partner's claim, its run's status and version (null: deleted by run retention) and its run's record's status (null: none yet). */
const CLAIM_HOLDER = `select c.run_id, ${RUN_OF('c')},
    (select o.status from partner_offboardings o where o.tenant_id = ? and o.run_id = c.run_id) as offboarding_status
  from partner_offboarding_claims c where c.tenant_id = ? and c.partner_reference = ?`;
/** A claim whose run no longer holds the partner, taken over: only while it is still that run's. */
const TAKE_OVER = `update partner_offboarding_claims set id = ?, run_id = ?, claimed_at = now() where tenant_id = ? and partner_reference = ? and run_id = ? returning run_id`;
/** The claim of a partner none held when read, which another submission may insert first (then nothing is returned). */
const CLAIM_PARTNER = `insert into partner_offboarding_claims (id, tenant_id, partner_reference, run_id, claimed_at) values (?, ?, ?, ?, now())
  on conflict (tenant_id, partner_reference) do nothing returning run_id`;

/**
 * The workflow's submission guard (`admitSubmission`): a submission of a partner that another
 * offboarding of the tenant holds is refused, 409 naming that run and its status, and starts no run
 * (rather than one that fails at freeze-partner). In the submission's transaction, under the tenant's
 * RLS, it claims the partner for the new run (`partner_offboarding_claims`, one row per partner),
 * from its submission on: a second submission while the first run is still pending in the queue, or
 * not yet past freeze-partner, is refused as well, naming a run whose `offboarding_status` is null. Two
 * submissions at once meet on the claim's key: the second waits for the first's transaction, and is
 * refused once it commits (or takes the claim if it rolls back). A claim whose run holds nothing any
 * more (cancelled, deleted by run retention, its record abandoned, or failed with its retry refused
 * for good: on a workflow version declared retired, or not retryable) is taken over, guarded by the run it
 * named, so two taking it over at once are one accepted and one refused. It locks the claim only (no
 * record, no run): the holder's own steps never wait for it. Runs from before the claims were claimed
 * for by a migration (partner_offboarding_claims_backfill); one an old web process accepted during the
 * deploy holds none: its record is checked as before, and freeze-partner's claim of the record is the backstop.
 */
export async function refuseHeldPartner(em: EntityManager, submission: OffboardingSubmission, run: SubmissionRun): Promise<void> {
  const { reference } = submission.partner;
  const { tenantId, runId } = run;
  const holds = (h: Held) => holdsPartner(em, tenantId, h, run.retired);
  const rows = await em.execute<Array<Held & { kind: 'record' | 'claimed' }>>(RECORD_AND_CLAIM, [...liveRecordParams(tenantId, reference), randomUUID(), tenantId, reference, runId]);
  const record = rows.find((r) => r.kind === 'record');
  if (record && (await holds(record))) throw refusal(reference, record);
  if (rows.some((r) => r.kind === 'claimed')) return;
  // Another run of the tenant claimed the partner: refused while that run holds it, else taken over.
  for (let attempt = 0; attempt < 5; attempt++) {
    const [claim] = await em.execute<Held[]>(CLAIM_HOLDER, [tenantId, tenantId, tenantId, tenantId, reference]);
    if (claim && (await holds(claim))) throw refusal(reference, claim);
    const taken = claim ? await em.execute(TAKE_OVER, [randomUUID(), runId, tenantId, reference, claim.run_id]) : await em.execute(CLAIM_PARTNER, [randomUUID(), tenantId, reference, runId]);
    if (taken[0]) return;
    // Another submission changed the claim since it was read (and committed): read it again.
  }
  throw new Error(`partner ${reference}: its claim kept changing under run ${runId}'s submission`);
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
    // The database's time (ctx.now), never this worker's clock, as every step's: so are settled_at and archived_at.
    const frozenAt = ctx.now;
    const { reference, name } = submission.partner;
    const claim = () => ctx.em.execute<{ id: string }[]>(CLAIM, [id, ctx.run.tenantId, ctx.run.id, reference, name, submission.reason, frozenAt]);
    if (!(await claim())[0]) {
      const [holder] = await ctx.em.execute<Holder[]>(HOLDER, liveRecordParams(ctx.run.tenantId, reference));
      // Gone since the claim, or this run's own (another execution of the step got there first): a
      // plain (retryable) error, whose retry reads the run and goes on from what is stored.
      if (!holder || holder.run_id === ctx.run.id) throw new Error(`partner ${reference}: its offboarding record changed under run ${ctx.run.id}'s freeze`);
      // A run cancelled before it archived (or deleted by retention, or failed for good: its retry refused) holds nothing: its record is given up.
      if (await holdsPartner(ctx.em, ctx.run.tenantId, heldOf(holder), ctx.retired)) throw new PartnerAlreadyOffboardedError(reference, holder);
      // By its run (unique per tenant, and locked above): the key is `id` alone, and `tenant_id = ? and id = ?`
      // was planned, generic, as a walk of the tenant's records by (tenant_id, run_id) (tenant-scoped-queries.test.ts).
      await ctx.em.execute(`update partner_offboardings set status = 'abandoned' where tenant_id = ? and run_id = ?`, [ctx.run.tenantId, holder.run_id], 'run');
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
    const settlement: Settlement = { lines: settle(submission.balances), settled_at: ctx.now.toISOString() };
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
    const archivedAt = ctx.now.toISOString();
    const id = await advance(ctx.em, ctx, 'settled', `status = 'archived', archived_at = ?`, [archivedAt]);
    return { offboarding_id: id, archived_at: archivedAt };
  },
});
