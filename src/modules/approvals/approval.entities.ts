import { defineEntity, p } from '@mikro-orm/core';
import { BY_TABLE_OWNER, tenantIdProperty, tenantIsolationPolicy } from '../../platform/db/tenant-owned.ts';
import { DEFAULT_POLICY } from './approval.policy.ts';
import { APPROVAL_PACKET_STEP } from './approval.constants.ts';
import { committedWithItsStep } from '../../platform/durable/durable-checkpoint.entity.ts';

export const APPROVAL_STATUSES = ['pending', 'approved', 'rejected', 'expired', 'withdrawn'] as const;
export type ApprovalStatus = (typeof APPROVAL_STATUSES)[number];
/** Every status but `pending`: a request that is no longer open work. */
export const DECIDED_STATUSES = APPROVAL_STATUSES.filter((s) => s !== 'pending');

/** Step 3's durable wait: one approval request per run, with its class and SLA deadline. */
export const ApprovalRequest = defineEntity({
  name: 'ApprovalRequest',
  tableName: 'approval_requests',
  properties: {
    id: p.uuid().primary(),
    tenantId: tenantIdProperty(),
    runId: p.uuid(),
    approvalClass: p.string().length(1),
    requiredApprovals: p.integer(),
    status: p.enum(APPROVAL_STATUSES),
    submittedBy: p.string().length(255),
    reasons: p.json<string[]>(),
    slaDeadline: p.datetime().nullable(),
    /**
     * The version of the tenant's approval policy the step classified by (0: the defaults), as its
     * packet names it: `/verify` holds the evidence pack's policy to it (ADR 0010). Written once, by the
     * step's insert (the application role may not update it: roles.ts); null for requests opened before it
     * was recorded.
     */
    policyVersion: p.integer().nullable(),
    decidedAt: p.datetime().nullable(),
    createdAt: p.datetime(),
    updatedAt: p.datetime(),
  },
  uniques: [{ name: 'approval_requests_tenant_run_unique', properties: ['tenantId', 'runId'] }],
  indexes: [
    // The approvals list, newest first within the tenant, a page at a time by (created_at, id) keyset,
    // one range per status merged in order (approvals.routes.ts): the id completes each index's order,
    // so a page is read in index order without a sort. Partial, pending requests (the open work) and
    // decided ones, never one over every request: a tenant-leading index that holds every row is one a
    // statement naming a request by id can be planned onto on a table without statistics (`id` tested
    // behind `created_at`, the tenant's requests walked), as the durable_runs list's was
    // (durable-run.entity.ts). Statements naming one request test no status, or `status || ''`.
    { name: 'approval_requests_tenant_pending_index', properties: ['tenantId', 'createdAt', 'id'], where: "status = 'pending'" },
    { name: 'approval_requests_tenant_decided_index', properties: ['tenantId', 'status', 'createdAt', 'id'], where: `status in (${DECIDED_STATUSES.map((s) => `'${s}'`).join(', ')})` },
    // A request by id (a decision, its view, an SLA expiry), within its tenant. Partial on a predicate
    // every such statement proves (`id = …` is strict) and a statement naming the request by its run
    // does not: on a table without statistics an equality on tenant_id costs what a key costs, and the
    // newest index the planner can use wins the tie — this one for the lookups by id (over
    // approval_requests_tenant_run_unique, which they could walk by tenant alone), never for those by run.
    { name: 'approval_requests_tenant_id_id_index', properties: ['tenantId', 'id'], where: 'id is not null' },
  ],
  rowLevelSecurity: 'force',
  policies: [tenantIsolationPolicy('approval_requests')],
  triggers: [
    // Only with the approval step's checkpoint that names it — waiting for approvers, or completed (class A,
    // approved at once) —, its id, class and approvals required (committedWithItsStep, at the commit): a
    // request for a run that has not reached its approval step, or one the step did not open, is refused
    // (42501), so step 3 never meets a request it did not write, nor an approver one whose packet it never made.
    committedWithItsStep({
      step: APPROVAL_PACKET_STEP,
      statuses: ['waiting', 'completed'],
      names: { approval_request_id: 'id', approval_class: 'approval_class', required_approvals: 'required_approvals' },
      row: 'approval request',
    }),
  ],
});

/**
 * One decision per approver per request: a C request needs two distinct approvers. Keyed by
 * (tenant, request, approver): `id` is written, never looked up, and not indexed (docs/performance-history.md, session 24).
 */
export const ApprovalDecision = defineEntity({
  name: 'ApprovalDecision',
  tableName: 'approval_decisions',
  properties: {
    id: p.uuid(),
    tenantId: tenantIdProperty().primary(),
    approvalRequestId: p.uuid().primary(),
    approver: p.string().length(255).primary(),
    decision: p.enum(['approve', 'reject'] as const),
    kind: p.enum(['human', 'system'] as const),
    comment: p.string().length(2000).nullable(),
    createdAt: p.datetime(),
  },
  rowLevelSecurity: 'force',
  policies: [tenantIsolationPolicy('approval_decisions')],
});

/** The thresholds and SLAs of a policy version, as the policy row and its history row (ApprovalPolicyVersionRow) both hold them. */
const policyThresholds = () => ({
  classAMaxCost: p.double(),
  classAMaxPaybackMonths: p.double(),
  classCMinCost: p.double(),
  classCMinPaybackMonths: p.double(),
  slaBSeconds: p.integer(),
  slaCSeconds: p.integer(),
});

/** Who set a policy version and when, as the policy row and its history row both record it. */
const policyAuthors = () => ({
  updatedAt: p.datetime(),
  /** The sub of the admin whose PUT wrote the row, or proposed the change a second admin confirmed (null for rows written before it was recorded). */
  updatedBy: p.string().length(255).nullable(),
  /**
   * The sub of the second admin who confirmed the change (a change that loosens the policy: ADR 0010);
   * null when it applied at once (it only tightened) or was written before confirmations existed.
   */
  approvedBy: p.string().length(255).nullable(),
});

/** The columns of a policy version, as approval_policies and approval_policy_versions both name them. */
const VERSION_COLUMNS = 'tenant_id, version, class_amax_cost, class_amax_payback_months, class_cmin_cost, class_cmin_payback_months, sla_bseconds, sla_cseconds, currency, updated_at, updated_by, approved_by';

/**
 * Records each version of a tenant's policy in approval_policy_versions, whatever statement wrote it:
 * a trigger, not the application's writes, so a version applied by a release that knows nothing of the
 * history (an old web process during the deploy that added it, or a rollback) is recorded too, instead
 * of reading `approval_policy: mismatch` in every pack naming it once it is replaced. It fires on an
 * insert, or an update that changes the version, of `approval_policies`, and is deferred to the commit
 * (a constraint trigger, DEFERRABLE INITIALLY DEFERRED): it then copies the row as the transaction
 * leaves it, so an approved change's restamp of `updated_at` (a later statement than its upsert,
 * approveChange) is the time recorded, as the row keeps it. In the writer's transaction, as the writing
 * role (SECURITY INVOKER, under the history's RLS: the application role may insert history rows, never
 * change them; and only the policy as it commits, POLICY_VERSION_GUARD). `on conflict do nothing`: two version changes in one transaction record the one it
 * commits, once; a history row of that version that differs from the row is refused (42501), never left in
 * its place (Migration20261206090000). It also refuses there a version naming an approver without the
 * approved change it applies (APPROVED_CHANGE; the owner excepted, as for POLICY_VERSION_ORDER).
 */
export const POLICY_VERSION_TRIGGER = 'record_version';

/** The VERSION_COLUMNS of row `r` (a trigger's new or old, or an alias), but `except`. */
const cols = (r: string, except?: string) =>
  VERSION_COLUMNS.split(', ')
    .filter((c) => c !== except)
    .map((c) => `${r}.${c}`)
    .join(', ');

/** Whether the writing role is the table's owner (or a member of it: a superuser is), which could drop or disable these triggers anyway. */
const BY_OWNER = BY_TABLE_OWNER;

/** The 42501 of a policy write the guard refuses (POLICY_VERSION_ORDER). */
const refuse = (r: string) =>
  `raise exception 'approval policy version % of tenant %: only the next version, and one that loosens the policy only as a change a second admin approved (ADR 0010)', ${r}.version, ${r}.tenant_id using errcode = 'insufficient_privilege';`;

/**
 * Whether policy `next` loosens policy `prev` (both rows of approval_policies): loosenedFields
 * (approval.policy.ts) in SQL — a raised class A or C bound, a longer SLA, another currency, or a lowered C
 * bound when the C SLA is longer than the B SLA was (runs moved from B to C get more time).
 */
const loosens = (prev: string, next: string) =>
  `${next}.class_amax_cost > ${prev}.class_amax_cost or ${next}.class_amax_payback_months > ${prev}.class_amax_payback_months ` +
  `or ${next}.class_cmin_cost > ${prev}.class_cmin_cost or ${next}.class_cmin_payback_months > ${prev}.class_cmin_payback_months ` +
  `or ${next}.sla_bseconds > ${prev}.sla_bseconds or ${next}.sla_cseconds > ${prev}.sla_cseconds or ${next}.currency <> ${prev}.currency ` +
  `or (${next}.sla_cseconds > ${prev}.sla_bseconds and (${next}.class_cmin_cost < ${prev}.class_cmin_cost or ${next}.class_cmin_payback_months < ${prev}.class_cmin_payback_months))`;

/**
 * Whether a first policy `next` loosens the defaults, as far as the database knows them: their thresholds
 * and currency (DEFAULT_POLICY); their SLAs are configuration (APPROVAL_SLA_B/C), which it does not see —
 * a longer SLA than configured, or a lowered C bound that gives moved runs more time, is checked by the API alone.
 */
const loosensDefaults = (next: string) =>
  `${next}.class_amax_cost > ${DEFAULT_POLICY.classAMaxCost} or ${next}.class_amax_payback_months > ${DEFAULT_POLICY.classAMaxPaybackMonths} ` +
  `or ${next}.class_cmin_cost > ${DEFAULT_POLICY.classCMinCost} or ${next}.class_cmin_payback_months > ${DEFAULT_POLICY.classCMinPaybackMonths} or ${next}.currency <> '${DEFAULT_POLICY.currency}'`;

/**
 * The approved change the policy row `p` names (approveChange, approval-policy.changes.ts): based on the
 * version before it, proposed by its updated_by, decided by its approved_by at its updated_at (the
 * approval restamps the row with its decided_at), and proposing exactly its thresholds, SLAs and currency.
 */
const APPROVED_CHANGE =
  "select from public.approval_policy_changes c where c.tenant_id = p.tenant_id and c.status = 'approved' and c.base_version = p.version - 1 " +
  'and c.proposed_by = p.updated_by and c.decided_by = p.approved_by and c.decided_by <> c.proposed_by and c.decided_at = p.updated_at ' +
  "and (c.policy->>'class_a_max_cost')::float8 = p.class_amax_cost and (c.policy->>'class_a_max_payback_months')::float8 = p.class_amax_payback_months " +
  "and (c.policy->>'class_c_min_cost')::float8 = p.class_cmin_cost and (c.policy->>'class_c_min_payback_months')::float8 = p.class_cmin_payback_months " +
  "and (c.policy->>'sla_b_seconds')::int = p.sla_bseconds and (c.policy->>'sla_c_seconds')::int = p.sla_cseconds and c.policy->>'currency' = p.currency";

/**
 * Guards the policy row against the application role's own statements (ADR 0010, amendment "the policy
 * row takes only the next version"): `approval_policies` is updated whole by a PUT or an approval, so no
 * column grant can narrow it, and a raw update could set any thresholds with `version + 1` and names of
 * its choosing, which POLICY_VERSION_TRIGGER then recorded as a genuine version. A BEFORE INSERT OR
 * UPDATE trigger refuses (42501): a first row other than version 1; a version other than the next; a
 * version kept with any column changed but `updated_at`, and that only before the version is recorded
 * (an approval's restamp, in the transaction that applied it); and a version `approved_by` nobody that
 * loosens the one before it (`loosens`, the rule of loosenedFields; a first row against the defaults'
 * thresholds: `loosensDefaults`). A version that names an approver is held at the commit by
 * POLICY_VERSION_TRIGGER to the approved change it applies (APPROVED_CHANGE): the approval marks its
 * change after the upsert, so a BEFORE trigger cannot see it. The owner (and a superuser, a member of
 * every role) is not held: it could drop the triggers, and tests and migrations rewrite rows as it.
 */
export const POLICY_VERSION_ORDER = 'versions_in_order';

/** A tenant's approval policy; absent means the platform defaults. */
export const ApprovalPolicyRow = defineEntity({
  name: 'ApprovalPolicy',
  tableName: 'approval_policies',
  properties: {
    id: p.uuid().primary(),
    tenantId: tenantIdProperty(),
    ...policyThresholds(),
    /** ISO 4217: the currency of the cost thresholds (rows written before it had one: SAR, the defaults'). */
    currency: p.string().length(3).default('SAR'),
    ...policyAuthors(),
    /** 1 for the tenant's first policy, one more for each change applied; a proposed change names the version it was based on. */
    version: p.integer().default(1),
  },
  uniques: [{ name: 'approval_policies_tenant_unique', properties: ['tenantId'] }],
  rowLevelSecurity: 'force',
  policies: [tenantIsolationPolicy('approval_policies')],
  triggers: [
    {
      // Created by its migration as a CONSTRAINT trigger, DEFERRABLE INITIALLY DEFERRED (the schema
      // generator reads neither: it compares the timing, events and body declared here). See
      // POLICY_VERSION_TRIGGER.
      name: POLICY_VERSION_TRIGGER,
      timing: 'after',
      events: ['insert', 'update'],
      body:
        "if tg_op = 'UPDATE' and new.version = old.version then return null; end if; " +
        `insert into public.approval_policy_versions (id, ${VERSION_COLUMNS}) select gen_random_uuid(), ${VERSION_COLUMNS} from public.approval_policies where tenant_id = new.tenant_id ` +
        'on conflict (tenant_id, version) do nothing; ' +
        // A history row of that version already there must be this very row (a second version change of the transaction): one that differs is refused, never kept in its place.
        `if exists (select from public.approval_policies p where p.tenant_id = new.tenant_id and not exists (select from public.approval_policy_versions h where h.tenant_id = p.tenant_id and h.version = p.version and (${cols('h')}) is not distinct from (${cols('p')}))) then ` +
        "raise exception 'approval policy version % of tenant % differs from its history row', new.version, new.tenant_id using errcode = 'insufficient_privilege'; end if; " +
        `if not ${BY_OWNER} and exists (select from public.approval_policies p where p.tenant_id = new.tenant_id and p.approved_by is not null and not exists (${APPROVED_CHANGE})) then ` +
        "raise exception 'approval policy version % of tenant % names an approver but no change approved by them', new.version, new.tenant_id using errcode = 'insufficient_privilege'; end if; " +
        'return null;',
    },
    {
      // A plain BEFORE trigger (the schema generator creates it as declared). See POLICY_VERSION_ORDER.
      name: POLICY_VERSION_ORDER,
      timing: 'before',
      events: ['insert', 'update'],
      body:
        `if ${BY_OWNER} then return new; end if; ` +
        // An upsert's insert whose row exists goes on as its update (the BEFORE UPDATE fires for that); without one, the unique key refuses it.
        "if tg_op = 'INSERT' then if exists (select from public.approval_policies p where p.tenant_id = new.tenant_id) then return new; end if; " +
        `if new.version <> 1 or (new.approved_by is null and (${loosensDefaults('new')})) then ${refuse('new')} end if; return new; end if; ` +
        `if new.version = old.version then if (new.id, ${cols('new', 'updated_at')}) is distinct from (old.id, ${cols('old', 'updated_at')}) ` +
        'or (new.updated_at is distinct from old.updated_at and exists (select from public.approval_policy_versions h where h.tenant_id = new.tenant_id and h.version = new.version)) ' +
        `then ${refuse('new')} end if; return new; end if; ` +
        `if new.version <> old.version + 1 or (new.approved_by is null and (${loosens('old', 'new')})) then ${refuse('new')} end if; return new;`,
    },
  ],
});

/**
 * Refuses (42501) a history row that is not the tenant's policy row as the inserting transaction commits
 * it: the same version and every recorded column (`is not distinct from`: updated_by and approved_by may
 * be null). POLICY_VERSION_TRIGGER's copies pass by construction; what it stops is the application role
 * inserting a version of its own making — one before the history began, one not yet reached, or the next
 * one with other values than the policy then takes — which an evidence pack forged by that role could
 * name and match in /verify, or which would turn the packs naming a lower version from `absent` to
 * compared. A constraint trigger deferred to the commit, like POLICY_VERSION_TRIGGER (whose copy fires
 * it in turn, at the same commit): it compares with the row as the transaction leaves it, and runs after
 * row-level security has refused another tenant's row at its insert. It reads `approval_policies` as the
 * inserting role, under that table's RLS: another tenant's policy is no policy.
 */
export const POLICY_VERSION_GUARD = 'is_the_policy';

/**
 * Every version of a tenant's approval policy, as it was applied (ADR 0010): one row per (tenant,
 * version), written by POLICY_VERSION_TRIGGER in the transaction that made that version the one in
 * force, with the policy row's values as it commits. `approval_policies` is replaced in place; this is
 * what `/verify` compares an evidence pack's policy with, whichever version it names. Append-only for the
 * application role (roles.ts). The migration that created it recorded each tenant's version then in
 * force: earlier versions are not kept.
 */
export const ApprovalPolicyVersionRow = defineEntity({
  name: 'ApprovalPolicyVersion',
  tableName: 'approval_policy_versions',
  properties: {
    /** Names the row (written, never looked up: the key is (tenant, version)). */
    id: p.uuid(),
    tenantId: tenantIdProperty().primary(),
    version: p.integer().primary(),
    ...policyThresholds(),
    currency: p.string().length(3),
    ...policyAuthors(),
  },
  rowLevelSecurity: 'force',
  policies: [tenantIsolationPolicy('approval_policy_versions')],
  triggers: [
    {
      // Created by its migration as a CONSTRAINT trigger, DEFERRABLE INITIALLY DEFERRED (as
      // POLICY_VERSION_TRIGGER: the schema generator reads neither). See POLICY_VERSION_GUARD.
      name: POLICY_VERSION_GUARD,
      timing: 'after',
      events: ['insert'],
      body:
        `if not exists (select from public.approval_policies p where p.tenant_id = new.tenant_id and (${VERSION_COLUMNS.replace(/\w+/g, 'p.$&')}) is not distinct from (${VERSION_COLUMNS.replace(/\w+/g, 'new.$&')})) then ` +
        "raise exception 'approval policy version % of tenant % is not the tenant''s policy as this transaction commits it', new.version, new.tenant_id using errcode = 'insufficient_privilege'; end if; return null;",
    },
  ],
});

export const POLICY_CHANGE_STATUSES = ['pending', 'approved', 'rejected', 'expired', 'superseded'] as const;
export type PolicyChangeStatus = (typeof POLICY_CHANGE_STATUSES)[number];

/**
 * Four eyes held by the database (ADR 0010, amendment "four eyes in the database"): the application role
 * writes `approval_policy_changes` (it proposes and decides changes), so a statement run as it — a bug, or a
 * compromised connection — could insert a change already `approved`, or mark one approved by its own
 * proposer or by nobody, and then apply it (POLICY_VERSION_TRIGGER checks the policy against the change, not
 * the change's own decision). A BEFORE INSERT OR UPDATE trigger refuses (42501), but for the table's owner
 * (as POLICY_VERSION_ORDER: migrations, repairs, tests' fixtures):
 * - an insert other than `pending` with no decision (`decided_by`, `decided_at` null), as proposeChange stores it;
 * - any update of a change no longer stored `pending`: a decision is final;
 * - an update of what was proposed, by whom or when (every column but `status`, `decided_by`, `decided_at`;
 *   the application role's column grant already says so);
 * - `approved` without a `decided_by` other than `proposed_by`, or with a `decided_at` not of its
 *   transaction (DECIDED_NOW), or at or past `expires_at` (approveChange: `statement_timestamp()`, only
 *   while not expired);
 * - `rejected` without a `decided_by`, or with a `decided_at` not of its transaction (rejectChange; the
 *   proposer may reject, which withdraws it);
 * - `expired` or `superseded` with a `decided_by` or without a `decided_at` (supersedePending: nobody decides them);
 * - `pending` again: a pending change moves only to one of those.
 */
export const POLICY_CHANGE_FOUR_EYES = 'four_eyes';

/**
 * A decision's time is its own transaction's: not before it began (`now()`), not after the statement
 * (`statement_timestamp()`, what approveChange and rejectChange write). The range, not the statement's time
 * alone: a web process of a release before 2ca29774 (2026-12-05) wrote `now()`, and may still decide during
 * a rolling deploy. No decision backdated past its transaction, none dated ahead, none without a time.
 */
const DECIDED_NOW = 'coalesce(new.decided_at between now() and statement_timestamp(), false)';

/** The 42501 of a change write POLICY_CHANGE_FOUR_EYES refuses, saying `why`. */
const refuseChange = (why: string) =>
  `raise exception 'approval policy change % of tenant %: ${why} (ADR 0010, four eyes)', new.id, new.tenant_id using errcode = 'insufficient_privilege';`;

/** The columns of a change a decision leaves as proposed. */
const PROPOSAL_COLUMNS = 'id, tenant_id, policy, base_version, base_policy, loosens, proposed_by, created_at, expires_at';
const proposal = (r: string) =>
  PROPOSAL_COLUMNS.split(', ')
    .map((c) => `${r}.${c}`)
    .join(', ');

/**
 * A proposed policy change that loosens the policy (ADR 0010): it applies only when a second admin of
 * the tenant approves it while the policy is still the version it was based on, before `expiresAt`.
 * `pending` past `expiresAt` reads `expired`; `superseded` once another change applied first.
 */
export const ApprovalPolicyChange = defineEntity({
  name: 'ApprovalPolicyChange',
  tableName: 'approval_policy_changes',
  properties: {
    id: p.uuid().primary(),
    tenantId: tenantIdProperty(),
    /** The proposed policy, whole, as PUT /approval-policy's body (the currency filled in). */
    policy: p.json<Record<string, unknown>>(),
    /** The version of the tenant's policy when it was proposed (0: the defaults). */
    baseVersion: p.integer(),
    /**
     * The policy in force it was compared with, whole, as PUT /approval-policy's body: for version 0 the
     * defaults with the SLAs configured then, which an operator may change (APPROVAL_SLA_B/C) without a
     * new version; the change reads superseded while they differ (ADR 0010). Null for changes proposed
     * before it was recorded.
     */
    basePolicy: p.json<Record<string, unknown>>().nullable(),
    /** The fields that loosen that version's policy: what the second admin confirms. */
    loosens: p.json<string[]>(),
    status: p.enum(POLICY_CHANGE_STATUSES),
    proposedBy: p.string().length(255),
    createdAt: p.datetime(),
    expiresAt: p.datetime(),
    /** The admin who approved or rejected it; null while pending, expired or superseded. */
    decidedBy: p.string().length(255).nullable(),
    decidedAt: p.datetime().nullable(),
  },
  // The tenant's changes newest first, a page at a time by (created_at, id) keyset.
  indexes: [{ name: 'approval_policy_changes_tenant_created_id_index', properties: ['tenantId', 'createdAt', 'id'] }],
  rowLevelSecurity: 'force',
  policies: [tenantIsolationPolicy('approval_policy_changes')],
  triggers: [
    {
      // A plain BEFORE trigger (the schema generator creates it as declared; its function's search_path is the migration's). See POLICY_CHANGE_FOUR_EYES.
      name: POLICY_CHANGE_FOUR_EYES,
      timing: 'before',
      events: ['insert', 'update'],
      body:
        `if ${BY_OWNER} then return new; end if; ` +
        "if tg_op = 'INSERT' then if new.status <> 'pending' or new.decided_by is not null or new.decided_at is not null then " +
        `${refuseChange('a change is proposed pending, undecided; only a second admin approves it')} end if; return new; end if; ` +
        // A write that changes nothing (a no-op update, `set status = status`) moves nothing: let through.
        'if new is not distinct from old then return new; end if; ' +
        `if old.status <> 'pending' then ${refuseChange('it is decided, and a decision is final')} end if; ` +
        `if (${proposal('new')}) is distinct from (${proposal('old')}) then ${refuseChange('what was proposed, by whom and when, is kept as proposed')} end if; ` +
        `if new.status = 'approved' then if new.decided_by is null or new.decided_by = new.proposed_by or not (${DECIDED_NOW}) or new.expires_at <= statement_timestamp() then ` +
        `${refuseChange('only an admin other than its proposer approves it, now, before it expires')} end if; ` +
        `elsif new.status = 'rejected' then if new.decided_by is null or not (${DECIDED_NOW}) then ` +
        `${refuseChange('a rejection names its admin, now')} end if; ` +
        "elsif new.status in ('expired', 'superseded') then if new.decided_by is not null or new.decided_at is null then " +
        `${refuseChange('nobody decides an expired or superseded change')} end if; ` +
        `else ${refuseChange('a pending change moves only to a decision')} end if; return new;`,
    },
  ],
});
