import { randomUUID } from 'node:crypto';
import type { EntityManager } from '@mikro-orm/postgresql';
import { z } from 'zod';
import { ConflictError, ForbiddenError, NotFoundError } from '../../platform/errors/app-error.ts';
import { DEFER_UNTIL_NEXT } from '../../platform/db/markers.ts';
import { nextCursor, pageSchema, pageWhere } from '../../platform/http/cursor.ts';
import { isoTime, toIsoTime, toIsoTimeOrNull } from '../../platform/http/iso-time.ts';
import { parseOrThrow } from '../../platform/http/validation.ts';
import type { Principal } from '../../platform/tenancy/jwt.ts';
import { POLICY_CHANGE_STATUSES, type PolicyChangeStatus } from './approval.entities.ts';
import {
  applyPolicy,
  approvalPolicyBody,
  approvalPolicySettings,
  defaultPolicy,
  loadPolicyWithSource,
  loosenedFields,
  policyFromBody,
  policyInForceSettings,
  policyToBody,
  type ApprovalPolicyBody,
  type LoadedPolicy,
  type PolicyField,
  type SlaDefaults,
} from './approval.policy.ts';

/**
 * Four-eyes on loosening the approval policy (ADR 0010). A PUT that loosens the policy in force does
 * not apply it: it proposes a change, based on the version in force. A second admin of the tenant
 * approves it (then it applies, if that version is still in force) or any admin rejects it; it
 * expires after APPROVAL_POLICY_CHANGE_TTL. Everything under the tenant's row-level security.
 *
 * Lock order: the tenant's policy row first, then changes. A PUT locks the row as it reads it, an
 * approval by its conditional upsert, and only then does either write a change (the one approved, the
 * ones superseded); a rejection locks only its change. So no two of them each hold a lock the other
 * waits for: an approval that locked its change first, while a PUT or another approval held the policy
 * and then wanted that change to supersede it, was a deadlock (PostgreSQL aborted one of them: 503).
 */
export const POLICY_PATH = '/api/v1/approval-policy';
export const CHANGES_PATH = `${POLICY_PATH}/changes`;

/**
 * The most changes a tenant may have pending (reading `pending`) at once: a proposal beyond it is 409
 * `too_many_pending_changes` and stores nothing. An admin could otherwise store changes without bound,
 * each one a row every list and count reads, and bury the one that matters among them.
 */
export const MAX_PENDING_CHANGES = 20;

const POLICY_FIELDS = Object.keys(approvalPolicySettings.shape) as [PolicyField, ...PolicyField[]];

export const policyChangeView = z
  .strictObject({
    id: z.uuid(),
    status: z
      .enum(POLICY_CHANGE_STATUSES)
      .describe(
        'pending: awaits a second admin. approved: applied (as base_version + 1). rejected: by an admin. expired: past expires_at undecided. superseded: the policy changed before it was approved, so it can no longer apply — except one based on the defaults superseded because the configured defaults differ from its base_policy: it reads pending again if they are restored, and may be rejected meanwhile',
      ),
    policy: approvalPolicySettings.describe('The proposed policy, whole: what applies if it is approved'),
    base_version: z.number().int().min(0).describe('The version of the policy in force when it was proposed (0: the defaults); it applies only while that version is in force'),
    base_policy: policyInForceSettings
      .nullable()
      .describe(
        'The policy in force it was compared with when proposed: what `loosens` is relative to. For base_version 0 the defaults with the SLAs configured then (APPROVAL_SLA_B / APPROVAL_SLA_C): while the configured ones differ it reads superseded. Null for changes proposed before it was recorded',
      ),
    loosens: z.array(z.enum(POLICY_FIELDS)).describe("The fields in which it loosens that version: a higher class A or C bound, a longer SLA, another currency, or a lower class C bound while the proposed C SLA is longer than the B SLA in force (the runs it moves from B to C get more time)"),
    proposed_by: z.string().describe('The admin (token sub) whose PUT proposed it; they cannot approve it'),
    proposed_at: isoTime,
    expires_at: isoTime,
    decided_by: z.string().nullable().describe('The admin who approved or rejected it; null otherwise'),
    decided_at: isoTime
      .nullable()
      .describe(
        'When it stopped being pending: approved, rejected, superseded (when another change applied) or expired (expires_at); null while pending, and when it was superseded by a change of the configured defaults (when is not recorded)',
      ),
    links: z.strictObject({ self: z.string(), approve: z.string(), reject: z.string() }),
  })
  .meta({ id: 'ApprovalPolicyChange' });
export type PolicyChangeView = z.infer<typeof policyChangeView>;

export const policyChangePage = pageSchema(policyChangeView).meta({ id: 'ApprovalPolicyChangePage' });
export type PolicyChangePage = z.infer<typeof policyChangePage>;

interface ChangeRow {
  id: string;
  tenant_id: string;
  policy: unknown;
  base_version: number;
  base_policy: unknown;
  loosens: PolicyField[];
  status: PolicyChangeStatus;
  proposed_by: string;
  created_at: Date | string;
  expires_at: Date | string;
  decided_by: string | null;
  decided_at: Date | string | null;
  /** Reads superseded only because the configured defaults are not its base_policy (it may read pending again). */
  superseded_by_config: boolean;
}

/**
 * The changes as they read: a stored `pending` past its `expires_at` reads `expired` (at its deadline),
 * and one whose base version is no longer in force reads `superseded` (at the policy's update) — what
 * applying a policy records (supersedePending), and what a change proposed while another applied reads.
 * One based on the defaults (version 0, no policy row yet) reads `superseded` too while the defaults
 * in force (its first parameter, `defaultsParam`) are not those it was compared with: an operator
 * changed APPROVAL_SLA_B/C, and applying it would loosen more than its `loosens` (ADR 0010). When is
 * not recorded: its decided_at is null. Expiry is by `clock`: `now()` (the transaction's start) for
 * reads; `statement_timestamp()` for an approval's check after it waited for the policy row, and for
 * a proposal's count against the cap after it waited for the policy row and the cap's lock, both of
 * which now() would place before that wait.
 */
const changes = (clock: 'now()' | 'statement_timestamp()' = 'now()') => `select c.id, c.tenant_id, c.policy, c.base_version, c.base_policy, c.loosens, c.proposed_by, c.created_at, c.expires_at, c.decided_by,
    case when c.status <> 'pending' then c.status when c.expires_at <= ${clock} then 'expired'
         when c.base_version <> coalesce(p.version, 0) then 'superseded'
         when p.version is null and c.base_policy is distinct from d.defaults then 'superseded' else 'pending' end as status,
    case when c.status <> 'pending' then c.decided_at when c.expires_at <= ${clock} then c.expires_at
         when c.base_version <> coalesce(p.version, 0) then p.updated_at end as decided_at,
    (c.status = 'pending' and c.expires_at > ${clock} and c.base_version = 0 and p.version is null
      and c.base_policy is distinct from d.defaults) as superseded_by_config
  from approval_policy_changes c left join approval_policies p on p.tenant_id = c.tenant_id cross join (select ?::jsonb as defaults) d`;

/** The parameter of `changes`: the defaults in force (version 0), as a change's base_policy records them. */
const defaultsParam = (defaults: SlaDefaults): string => JSON.stringify(policyToBody(defaultPolicy(defaults).policy));

function toView(row: ChangeRow): PolicyChangeView {
  const self = `${CHANGES_PATH}/${row.id}`;
  return {
    id: row.id,
    status: row.status,
    policy: approvalPolicySettings.parse(row.policy),
    base_version: Number(row.base_version),
    base_policy: row.base_policy == null ? null : policyInForceSettings.parse(row.base_policy),
    loosens: row.loosens,
    proposed_by: row.proposed_by,
    proposed_at: toIsoTime(row.created_at),
    expires_at: toIsoTime(row.expires_at),
    decided_by: row.decided_by,
    decided_at: toIsoTimeOrNull(row.decided_at),
    links: { self, approve: `${self}/approve`, reject: `${self}/reject` },
  };
}

/**
 * One change as it reads, locked for a decision when `forUpdate`, expiry by `clock` (changes); 404 when
 * RLS hides it or there is none.
 */
async function changeRow(
  em: EntityManager,
  tenantId: string,
  id: string,
  defaults: SlaDefaults,
  opts: { forUpdate?: boolean; clock?: 'now()' | 'statement_timestamp()' } = {},
): Promise<ChangeRow> {
  const [row] = await em.execute<ChangeRow[]>(`${changes(opts.clock)} where c.tenant_id = ? and c.id = ?${opts.forUpdate ? ' for update of c' : ''}`, [
    defaultsParam(defaults),
    tenantId,
    id,
  ]);
  if (!row) throw new NotFoundError('approval policy change');
  return row;
}

export async function getChange(em: EntityManager, tenantId: string, id: string, defaults: SlaDefaults): Promise<PolicyChangeView> {
  return toView(await changeRow(em, tenantId, id, defaults));
}

/** The tenant's changes newest first, by the status they read, a page at a time. */
export async function listChanges(
  em: EntityManager,
  tenantId: string,
  query: { status?: PolicyChangeStatus | undefined; cursor?: string | undefined; limit: number },
  defaults: SlaDefaults,
): Promise<PolicyChangePage> {
  const params: unknown[] = [defaultsParam(defaults), tenantId];
  const where = pageWhere('tenant_id = ?', params, query);
  const rows = await em.execute<ChangeRow[]>(`select * from (${changes()}) changes where ${where} order by created_at desc, id desc limit ?`, params);
  const page = rows.slice(0, query.limit);
  return { items: page.map(toView), next_cursor: nextCursor(page[page.length - 1], rows.length > query.limit) };
}

/**
 * A PUT (ADR 0010): compared with the policy in force, read locked so that it stays what the PUT
 * decided on, a policy that loosens it is proposed (`change`), anything else applies at once as the
 * next version (`applied`) and supersedes the changes pending.
 */
export async function replacePolicy(
  em: EntityManager,
  principal: Principal,
  body: ApprovalPolicyBody,
  opts: { defaults: SlaDefaults; changeTtlMs: number },
): Promise<{ change: PolicyChangeView } | { applied: LoadedPolicy }> {
  // A tenant without a row has nothing to lock: a first policy written meanwhile makes the insert miss
  // its base (version 0), and the next read locks that row and decides again.
  for (let attempt = 0; attempt < 3; attempt++) {
    const current = await loadPolicyWithSource(em, principal.tenantId, opts.defaults, { forUpdate: true });
    const loosens = loosenedFields(current.policy, body);
    if (loosens.length > 0) {
      const proposal = { policy: body, baseVersion: current.version, basePolicy: policyToBody(current.policy), loosens };
      return { change: await proposeChange(em, principal, proposal, opts) };
    }
    const applied = await applyPolicy(em, principal.tenantId, body, { baseVersion: current.version, updatedBy: principal.sub, approvedBy: null });
    if (applied) {
      await supersedePending(em, principal.tenantId);
      return { applied: { ...current, policy: policyFromBody(body), source: 'tenant', ...applied, updatedBy: principal.sub, approvedBy: null } };
    }
  }
  throw new Error('approval policy: the policy row changed under its lock');
}

/**
 * Stores a proposed change, pending until `ttlMs` from now, unless the tenant already has
 * MAX_PENDING_CHANGES pending (409). Its created_at is in milliseconds, as a run's: the list's keyset
 * cursor carries milliseconds, and a change earlier in the same millisecond than a page's last one
 * (next in the newest-first order) would be above the cursor, so the next page would skip it.
 *
 * Count-then-insert races: two proposals that each counted one short of the cap would both insert. The
 * policy row lock the PUT holds serialises them only when the tenant has a row; a tenant still on the
 * defaults has nothing to lock. So a lock per tenant, held to the end of the transaction, comes first
 * (it travels with the count in one message, ADR 0004; the count's snapshot is taken after it is
 * granted). Only proposals take it, after the policy row: no other writer waits for it (lock order).
 */
async function proposeChange(
  em: EntityManager,
  principal: Principal,
  proposal: { policy: ApprovalPolicyBody; baseVersion: number; basePolicy: ApprovalPolicyBody; loosens: PolicyField[] },
  opts: { defaults: SlaDefaults; changeTtlMs: number },
): Promise<PolicyChangeView> {
  await em.execute(`${DEFER_UNTIL_NEXT}select pg_advisory_xact_lock(hashtextextended('dealix:approval_policy_changes:' || ?, 0))`, [principal.tenantId]);
  // Expiry by the count's own statement clock: the PUT may have waited for the policy row, and then
  // for this lock, since its transaction began (now()); a change that expired meanwhile is no longer pending.
  // The same proposal again (the same admin, policy and base), still pending, is that change: a PUT is
  // idempotent (RFC 9110), and its Idempotency-Key optional, so a retry whose answer was lost must not
  // propose it twice. Found in the statement that counts (no round trip more).
  const [counted] = await em.execute<{ n: number; same: string | null }[]>(
    `select count(*)::int as n, (array_agg(id order by created_at) filter (where proposed_by = ? and base_version = ? and policy = ?::jsonb and base_policy = ?::jsonb))[1] as same
       from (${changes('statement_timestamp()')} where c.tenant_id = ?) pending where status = 'pending'`,
    [principal.sub, proposal.baseVersion, JSON.stringify(proposal.policy), JSON.stringify(proposal.basePolicy), defaultsParam(opts.defaults), principal.tenantId],
  );
  if (counted?.same) return getChange(em, principal.tenantId, counted.same, opts.defaults);
  const pending = counted?.n ?? 0;
  if (pending >= MAX_PENDING_CHANGES) {
    throw new ConflictError(
      'too_many_pending_changes',
      `The tenant already has ${pending} pending policy changes, the most it may have (${MAX_PENDING_CHANGES}): approve or reject one, or let it expire, before proposing another.`,
      { extensions: { pending, limit: MAX_PENDING_CHANGES } },
    );
  }
  const id = randomUUID();
  await em.execute(
    `insert into approval_policy_changes (id, tenant_id, policy, base_version, base_policy, loosens, status, proposed_by, created_at, expires_at)
     values (?, ?, ?::jsonb, ?, ?::jsonb, ?::jsonb, 'pending', ?, date_trunc('milliseconds', now()), date_trunc('milliseconds', now()) + ? * interval '1 millisecond')`,
    [id, principal.tenantId, JSON.stringify(proposal.policy), proposal.baseVersion, JSON.stringify(proposal.basePolicy), JSON.stringify(proposal.loosens), principal.sub, opts.changeTtlMs],
  );
  return getChange(em, principal.tenantId, id, opts.defaults);
}

/**
 * A policy applied: every change still pending was based on the version it replaced, so none of them
 * can apply any more. They are recorded `superseded` at the policy's update (its updated_at, as the row
 * now reads: taken after the writer's wait for it, applyPolicy, approveChange — not now(), the
 * transaction's start, before that wait: a change proposed by the PUT the writer waited for was
 * superseded before it was proposed), or `expired` at their deadline if past it by this statement's
 * clock: a change that expired while the writer waited has read expired since — it stays so.
 */
async function supersedePending(em: EntityManager, tenantId: string): Promise<void> {
  await em.execute(
    `update approval_policy_changes c set status = case when c.expires_at <= statement_timestamp() then 'expired' else 'superseded' end,
            decided_at = case when c.expires_at <= statement_timestamp() then c.expires_at else p.updated_at end
       from approval_policies p
      where p.tenant_id = c.tenant_id and c.tenant_id = ? and c.status = 'pending'`,
    [tenantId],
  );
}

function policyChangedError(detail = 'The approval policy changed since this change was based on it: it can no longer apply; propose it again.'): ConflictError {
  return new ConflictError('policy_changed', detail);
}

/** Why a change can no longer be decided (409: superseded, expired, decided); null while it is pending. */
function notPending(row: ChangeRow): ConflictError | null {
  if (row.status === 'pending') return null;
  if (row.status === 'superseded' && row.superseded_by_config) {
    return policyChangedError(
      'The defaults in force (their SLAs are configured: APPROVAL_SLA_B / APPROVAL_SLA_C) are no longer those this change was based on (its base_policy): it cannot apply while they differ; propose it again, or reject it.',
    );
  }
  if (row.status === 'superseded') {
    const base = Number(row.base_version) === 0 ? 'the defaults (version 0) with the SLAs configured when it was proposed' : `version ${row.base_version}`;
    return policyChangedError(`The approval policy in force is no longer ${base}, which this change was based on: it can no longer apply; propose it again.`);
  }
  if (row.status === 'expired') return new ConflictError('policy_change_expired', `The change expired undecided at ${toIsoTime(row.expires_at)}; propose it again.`);
  return new ConflictError('policy_change_decided', `The change is already ${row.status}.`);
}

/** The checks of a decision: the change is still pending. */
function ensurePending(row: ChangeRow): void {
  const conflict = notPending(row);
  if (conflict) throw conflict;
}

/** The 409 of a change found pending that another request decided or superseded before this one could. */
const decidedMeanwhile = (now: ChangeRow): ConflictError => notPending(now) ?? policyChangedError();

/**
 * A second admin approves a pending change: its policy applies as the next version (approved_by them),
 * if the policy is still the version it was based on. The proposer cannot approve it (403). The change
 * is read without a lock: the policy's upsert is the first lock taken (the lock order above), and the
 * change is then marked approved only if it is still pending (a rejection may have committed meanwhile)
 * and not yet past its expires_at by the clock of that statement, which follows the upsert's wait for
 * the policy row: one that expired while the approval waited is refused as expired, and the policy just
 * written rolls back. now() would not do: it is the transaction's start, before that wait.
 */
export async function approveChange(
  em: EntityManager,
  principal: Principal,
  id: string,
  defaults: SlaDefaults,
): Promise<{ version: number; updatedAt: Date; policy: ApprovalPolicyBody; proposedBy: string }> {
  const row = await changeRow(em, principal.tenantId, id, defaults);
  if (row.proposed_by === principal.sub) throw new ForbiddenError('The proposer of a policy change cannot approve it: a second admin of the tenant must.');
  ensurePending(row);
  // As a PUT would be checked now: a change proposed before its cost thresholds were held to the
  // currency's minor unit may be finer (422 naming `policy.<field>`; nothing applies, it stays pending
  // to be rejected or expire, and the same policy to the unit can be proposed again).
  const { policy } = parseOrThrow(z.object({ policy: approvalPolicyBody }), { policy: row.policy }, 'proposed policy', 422);
  const applied = await applyPolicy(em, principal.tenantId, policy, { baseVersion: Number(row.base_version), updatedBy: row.proposed_by, approvedBy: principal.sub });
  // Between the read and the write another change applied (its transaction committed first): this one
  // reads superseded now, or approved if that was this very change.
  if (!applied) throw decidedMeanwhile(await changeRow(em, principal.tenantId, id, defaults));
  // Approved at this statement's time, after the upsert's wait for the policy row, and the policy
  // updated at that time too (its updated_at, which the upsert set before its wait): one time for the
  // approval, the policy's version and the changes it supersedes (docs/api.md).
  const [marked] = await em.execute<{ decided_at: Date }[]>(
    `with c as (
       update approval_policy_changes set status = 'approved', decided_by = ?, decided_at = statement_timestamp()
        where tenant_id = ? and id = ? and status = 'pending' and expires_at > statement_timestamp() returning decided_at),
     p as (update approval_policies set updated_at = c.decided_at from c where approval_policies.tenant_id = ? returning 1)
     select decided_at from c`,
    [principal.sub, principal.tenantId, id, principal.tenantId],
  );
  // Rejected, or expired, meanwhile (read by a later statement's clock still): the policy just written
  // rolls back with this error. The status column comes first, then expiry, so the policy this
  // transaction wrote (a version past the change's base) does not make it read superseded.
  if (!marked) throw decidedMeanwhile(await changeRow(em, principal.tenantId, id, defaults, { clock: 'statement_timestamp()' }));
  await supersedePending(em, principal.tenantId);
  return { ...applied, updatedAt: marked.decided_at, policy, proposedBy: row.proposed_by };
}

/**
 * Any admin of the tenant rejects a pending change, its proposer too (who so withdraws it). Also one
 * superseded only by the configured defaults: unlike a change whose base version is gone, it reads
 * pending again if the operator restores the defaults it was based on (ADR 0010), so it must stay
 * withdrawable meanwhile.
 */
export async function rejectChange(em: EntityManager, principal: Principal, id: string, defaults: SlaDefaults): Promise<PolicyChangeView> {
  const row = await changeRow(em, principal.tenantId, id, defaults, { forUpdate: true });
  if (!row.superseded_by_config) ensurePending(row);
  // At this statement's time, after the wait for the change's lock above (now(), the transaction's start, is before it).
  await em.execute(`update approval_policy_changes set status = 'rejected', decided_by = ?, decided_at = statement_timestamp() where tenant_id = ? and id = ?`, [principal.sub, principal.tenantId, id]);
  return getChange(em, principal.tenantId, id, defaults);
}
