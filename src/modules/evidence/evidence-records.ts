import { z } from 'zod';
import { canonicalJson, sha256Hex } from '../../platform/idempotency/canonical-json.ts';
import { isoTimeSql } from '../../platform/webhooks/outbox.ts';
import { appliedPolicySchema, economicsInput, submissionSchema } from '../golden-path/golden-path.schemas.ts';
import { paybackRatio } from '../golden-path/economics-model.step.ts';
import { SYSTEM_APPROVER } from '../approvals/approval.constants.ts';
import { classify, CLASSIFIED_EXACTLY, CLASSIFIED_ON_ROUNDED_PAYBACK, DEFAULT_POLICY, policyToBody, type ApprovalPolicy } from '../approvals/approval.policy.ts';
import { asWritten, minorDigits } from '../../platform/money/minor-units.ts';

/**
 * What `/verify` compares an evidence pack's content with besides its seal: the records its run's steps
 * wrote. The seal proves the pack is the one inserted; it cannot prove the inserter told the truth. The
 * application role may insert packs (the evidence step does), and the seal trigger refuses only a pack
 * naming no run of its tenant or a run that is not pending or running, so a pack written by hand for a
 * real run of the tenant that has none yet — one running, between its final decision and its evidence
 * step, say; one waiting for its approvers or ended without a pack before the trigger refused those, or
 * inserted by a role without the trigger — hashes and seals as a genuine one does, with an invented
 * approval, a lower cost, another dossier. Its content must also agree with what the run's steps
 * recorded, each on its own row:
 *
 * - `run`: the run row (durable_runs) — `content.run`'s workflow@version, correlation id, submitter and
 *   submission time, and `content.submission` as the run's input (as stored, or parsed as the evidence
 *   step's input is). Run retention deletes the row (ADR 0011): `absent` then, which alone does not make a pack
 *   invalid — the seal trigger refused any pack whose run did not exist when it was written, so a run
 *   absent now was deleted since, and what else it recorded is checked on the rows below, which
 *   retention keeps. What only the run row held (correlation id, submission time, workflow version) is
 *   then no longer compared.
 * - `partner_dossier`: the step's row (partner_dossiers.content) equals `content.partner_dossier`
 *   (jsonb equality, in PostgreSQL: numbers by value, exactly), so do the columns the step copied from
 *   it (partner_name, country, completeness_score: what SQL reports read; STEP_ROW_COLUMNS), and
 *   `content.submission.partner` hashes to the inputs_sha256 of its profile's provenance (what step 1
 *   normalised: the submission is so checked after retention too).
 * - `economics_model`: the same with economics_models.content and its columns currency, cost and
 *   payback_months, and `{economics, currency}` of the submission with the model's provenance.
 * - `approval`: the run's approval request and its decisions — the packet's request id, class,
 *   required approvals, reasons and SLA deadline are the request's; the request, the packet and the
 *   pack are all decided the same way (approved or rejected); `content.run.submitted_by` is the
 *   request's submitter; the packet's decisions are the request's decision rows, each (approver,
 *   decision, comment, time to the millisecond, kind) once; and those decisions allow the outcome
 *   (decisionsAllow: four-eyes, never the submitter), which rows the application role may write cannot
 *   make true. The provenance of the packet is not compared.
 * - `approval_policy`: the packet's `policy` (approvalPolicyStatus) — the class, approvals needed, SLA
 *   deadline and currency mismatch it gives the pack's economics model are the packet's and the
 *   request's, by the rule the packet's provenance method names (approval-policy@2: the exact
 *   payback of `content.submission`; @1, every packet before it: `payback_months` to 2 decimals); its version is the one the request recorded (approval_requests.policy_version, which the
 *   application role may not update: a packet that drops its policy or names another version is a
 *   mismatch); and it is that version of the tenant's policy as the history of versions
 *   (approval_policy_versions, append-only) and, while in force, the policy row record it (or the
 *   defaults, version 0). `absent` for a version replaced before the history began, or for a packet
 *   that records no policy or version whose request recorded none either (both written before they
 *   did); neither makes a pack invalid.
 *
 * Each is `match`, `mismatch`, or `absent` (no such row: before retention only a forgery's case — every
 * genuine pack's run wrote all three before its evidence step, and none of them is ever deleted).
 * `valid` needs the three domain records to match, the run row to match or be absent, and the
 * approval policy not to mismatch.
 *
 * What this does not prove: the dossier and economics model are append-only for the application role
 * (roles.ts: a run past its second step keeps its own), but it may update the approval request (that is
 * how a decision is recorded) and add decision rows: a forger with its rights who also approves the
 * request and adds decisions in the database makes the approval agree — writes to two more tables, each
 * read elsewhere (the approvals list, the run's view), instead of one insert nothing else reads. The
 * pack's hash still cannot change once sealed.
 *
 * One statement with the seal's read (no round trip more): each record by its (tenant, run) key, under
 * the tenant's RLS, in the verification's transaction.
 */

export const RECORD_STATUSES = ['match', 'mismatch', 'absent'] as const;
export type RecordStatus = (typeof RECORD_STATUSES)[number];

const recordStatus = z.enum(RECORD_STATUSES);
export const evidenceRecords = z
  .strictObject({
    run: recordStatus.describe(
      "The run row: content.run's workflow, correlation_id, submitted_by and submitted_at, and content.submission as the run's input. absent once run retention deleted the run (ADR 0011), which does not make the pack invalid",
    ),
    partner_dossier: recordStatus.describe(
      "The run's stored partner dossier equals content.partner_dossier — its content, and its columns partner_name, country and completeness_score the profile's name and country and the facts' completeness_score — and content.submission.partner is what it was derived from (its provenance hash)",
    ),
    economics_model: recordStatus.describe(
      "The run's stored economics model equals content.economics_model — its content, and its columns currency, cost and payback_months (numbers by value) the model's — and content.submission's economics and currency are what it was computed from",
    ),
    approval: recordStatus.describe(
      "The run's approval request and its decisions: the packet's request id, class, required approvals, reasons, SLA deadline, outcome and decisions, and content.run.submitted_by, are the request's; the request is decided as content.outcome says; and the decisions allow that outcome (rejected: a rejection; approved: no rejection and at least required_approvals approvals by distinct approvers, none of them the submitter; each before the SLA deadline)",
    ),
    approval_policy: recordStatus.describe(
      "The approval packet's policy: the request's class, required approvals, SLA deadline (from the request's creation) and currency mismatch follow from it and content.economics_model, by the rule the packet's provenance method names (approval-policy@2: the exact payback of content.submission's economics; approval-policy@1, packets classified before: payback_months to 2 decimals; any other: mismatch); it names the policy version the approval step recorded on the request (a packet with no policy, no version or another version is a mismatch); and it is that version of the tenant's policy (thresholds, currency, SLAs, updated_at, updated_by, approved_by) as the history of versions and, while in force, the policy row record it, or the platform defaults' thresholds for version 0. absent when the run has no approval request (records.approval absent), when the packet records no policy or version and its request no version (both written before they did), or its version was replaced before the history of versions began and what it implies agrees: which does not make the pack invalid. mismatch too when the tenant's policy never reached the packet's version",
    ),
  })
  .describe("The pack's content compared with the records its run's steps wrote (each match, mismatch or absent): a pack sealed as written may still say what its run did not record")
  .meta({ id: 'EvidenceRecords' });
export type EvidenceRecords = z.infer<typeof evidenceRecords>;

/** The columns the verification's statement reads of the run's records (RECORD_JOINS), by these names. */
export interface RecordColumns {
  run_kept: boolean;
  run_workflow: string | null;
  run_correlation_id: string | null;
  run_principal: string | null;
  run_submitted_at: string | null;
  run_input: unknown;
  dossier_kept: boolean;
  dossier_equal: boolean | null;
  /** The dossier's columns (partner_name, country, completeness_score) are the pack's fields (STEP_ROW_COLUMNS). */
  dossier_columns_equal: boolean | null;
  economics_kept: boolean;
  economics_equal: boolean | null;
  /** The model's columns (currency, cost, payback_months) are the pack's fields (STEP_ROW_COLUMNS). */
  economics_columns_equal: boolean | null;
  approval_id: string | null;
  approval_class: string | null;
  approval_required: number | null;
  approval_status: string | null;
  approval_submitted_by: string | null;
  approval_reasons_equal: boolean | null;
  approval_sla_deadline: string | null;
  approval_decisions: unknown[] | null;
  approval_created_at: string | null;
  policy_version: number | null;
  policy_a_cost: number | null;
  policy_a_payback: number | null;
  policy_c_cost: number | null;
  policy_c_payback: number | null;
  policy_sla_b: number | null;
  policy_sla_c: number | null;
  policy_currency: string | null;
  policy_updated_at: string | null;
  policy_updated_by: string | null;
  policy_approved_by: string | null;
  /** The version the approval step recorded on the request (null: a request opened before it did). */
  approval_policy_version: number | null;
  /** The history row (approval_policy_versions) of the version the packet names, if there is one. */
  history_version: number | null;
  history_a_cost: number | null;
  history_a_payback: number | null;
  history_c_cost: number | null;
  history_c_payback: number | null;
  history_sla_b: number | null;
  history_sla_c: number | null;
  history_currency: string | null;
  history_updated_at: string | null;
  history_updated_by: string | null;
  history_approved_by: string | null;
  /** The tenant's first version in the history (the one in force when the history began), null without one. */
  history_first: number | null;
}

/** SQL: the pack's field at `path` (a jsonb path literal's elements: `economics_model,cost`). */
const packField = (path: string) => `(e.content #> '{${path}}')`;

/** SQL: whether text column `column` is the pack's field at `path`, a JSON string of the same characters (null when it is no string). */
const textIsField = (column: string, path: string) => `to_jsonb(${column}::text) = ${packField(path)}`;

/**
 * SQL: whether double precision column `column` is the pack's field at `path`, a JSON number of the
 * same value, compared as doubles: the field (jsonb numeric, the exact decimal the step's JSON wrote,
 * JavaScript's shortest round-trip form of its double) read as the double nearest it is the very double
 * the step wrote to the column, whatever extra_float_digits the session has (no float8 output, which
 * that setting may round to 15 digits, is compared). -0 is 0, as in canonical JSON (jsonb holds no -0);
 * NaN or Infinity in the column equals no field. A `null` field matches a null column (payback_months:
 * never paid back). Null — not equal — when the field is absent, of another type, or a number the cast
 * refuses: beyond the largest double (1.7976931348623157e308) or nonzero below the smallest
 * (4.9406564584124654e-324), no value a step wrote: a forged pack's number never makes the cast fail,
 * the nested CASEs guarding each cast in order. Every double is in: a genuine payback_months reaches
 * 1.2e308 (rates near 1e-300 pass validation), and a bound of 1e308 read its run a mismatch.
 */
function doubleIsField(column: string, path: string): string {
  const field = packField(path);
  const n = `${field}::numeric`;
  return `case when ${column} is null then ${field} = 'null'::jsonb
    when jsonb_typeof(${field}) = 'number' then case when abs(${n}) <= 1.7976931348623157e308 and (${n} = 0 or abs(${n}) >= 4.9406564584124654e-324) then ${column} = ${n}::float8 end end`;
}

/**
 * The columns its step copied onto the dossier's and the model's rows besides their content (what SQL
 * reports read), each compared with the pack's field it was copied from: a row whose column was changed
 * since (by the owner: the application role may not update these tables) reads a mismatch, as one whose
 * content was. True only when every column is equal.
 */
const STEP_ROW_COLUMNS = `
  (${textIsField('d.partner_name', 'partner_dossier,profile,name')} and ${textIsField('d.country', 'partner_dossier,profile,country')}
    and ${doubleIsField('d.completeness_score', 'partner_dossier,facts,completeness_score')}) is true as dossier_columns_equal,
  (${textIsField('m.currency', 'economics_model,currency')} and ${doubleIsField('m.cost', 'economics_model,cost')}
    and ${doubleIsField('m.payback_months', 'economics_model,payback_months')}) is true as economics_columns_equal`;

/**
 * The select list and joins that read a pack's run records, for a statement over `evidence_packs e`.
 * Each by its (tenant, run) key: durable_runs_tenant_id_id_unique, the dossier's and model's primary
 * keys, approval_requests_tenant_run_unique, and the decisions by their request (their primary key).
 * The keys are bound as parameters (RECORD_JOIN_PARAMS: the pack's tenant and run, which the caller has
 * read), not matched to the pack's columns: as a cached generic plan on tables without statistics the
 * join's condition was a join filter, each table's scan bounded by the tenant alone — every dossier of
 * the tenant read per verification (tenant-scoped-queries.test.ts).
 */
export const RECORD_COLUMNS = `
  r.id is not null as run_kept, r.workflow || '@v' || r.workflow_version as run_workflow, r.correlation_id as run_correlation_id,
  r.principal as run_principal, ${isoTimeSql('r.created_at')} as run_submitted_at, r.input as run_input,
  d.run_id is not null as dossier_kept, d.content = e.content -> 'partner_dossier' as dossier_equal,
  m.run_id is not null as economics_kept, m.content = e.content -> 'economics_model' as economics_equal,${STEP_ROW_COLUMNS},
  a.id as approval_id, a.approval_class, a.required_approvals as approval_required, a.status as approval_status,
  a.submitted_by as approval_submitted_by, a.reasons = e.content -> 'approval_packet' -> 'reasons' as approval_reasons_equal,
  ${isoTimeSql('a.sla_deadline')} as approval_sla_deadline, x.decisions as approval_decisions, ${isoTimeSql('a.created_at')} as approval_created_at,
  pol.version as policy_version, pol.class_amax_cost as policy_a_cost, pol.class_amax_payback_months as policy_a_payback,
  pol.class_cmin_cost as policy_c_cost, pol.class_cmin_payback_months as policy_c_payback, pol.sla_bseconds as policy_sla_b, pol.sla_cseconds as policy_sla_c,
  pol.currency as policy_currency, ${isoTimeSql('pol.updated_at')} as policy_updated_at, pol.updated_by as policy_updated_by, pol.approved_by as policy_approved_by,
  a.policy_version as approval_policy_version,
  hv.version as history_version, hv.class_amax_cost as history_a_cost, hv.class_amax_payback_months as history_a_payback,
  hv.class_cmin_cost as history_c_cost, hv.class_cmin_payback_months as history_c_payback, hv.sla_bseconds as history_sla_b, hv.sla_cseconds as history_sla_c,
  hv.currency as history_currency, ${isoTimeSql('hv.updated_at')} as history_updated_at, hv.updated_by as history_updated_by, hv.approved_by as history_approved_by,
  hf.first_version as history_first`;

/**
 * The version the pack's approval packet names, as an integer when it is a whole JSON number within
 * int's range (a forged pack may hold anything there: no cast may fail); else null. An integer, so the
 * history row is read by its key (tenant_id, version), not by the tenant with the version as a filter.
 * (`{0,1}`, not `?`: a question mark in the statement is a bound parameter.)
 */
const PACKET_POLICY_VERSION = `case when jsonb_typeof(e.content #> '{approval_packet,policy,version}') = 'number'
    and (e.content #>> '{approval_packet,policy,version}') ~ '^[0-9]{1,9}(\\.0+){0,1}$' then (e.content #>> '{approval_packet,policy,version}')::numeric::int end`;

export const RECORD_JOINS = `
  left join durable_runs r on r.tenant_id = ? and r.id = ?
  left join partner_dossiers d on d.tenant_id = ? and d.run_id = ?
  left join economics_models m on m.tenant_id = ? and m.run_id = ?
  left join approval_requests a on a.tenant_id = ? and a.run_id = ?
  left join lateral (
    select jsonb_agg(jsonb_build_object('decided_by', ad.approver, 'decision', ad.decision, 'comment', ad.comment,
             'decided_at', ${isoTimeSql('ad.created_at')}, 'kind', ad.kind)) as decisions
      from approval_decisions ad where ad.tenant_id = ? and ad.approval_request_id = a.id) x on true
  left join approval_policies pol on pol.tenant_id = ?
  left join approval_policy_versions hv on hv.tenant_id = ? and hv.version = ${PACKET_POLICY_VERSION}
  left join lateral (select min(version) as first_version from approval_policy_versions where tenant_id = ?) hf on true`;

/** RECORD_JOINS' parameters, in order: the pack's tenant and run for each record, the tenant for its decisions, its policy and its policy history (twice). */
export const recordJoinParams = (tenantId: string, runId: string): string[] => [tenantId, runId, tenantId, runId, tenantId, runId, tenantId, runId, tenantId, tenantId, tenantId, tenantId];

/** A field of unknown content, or undefined (a forged or older pack may have any shape). */
function at(value: unknown, ...path: string[]): unknown {
  let v = value;
  for (const key of path) v = v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>)[key] : undefined;
  return v;
}

const status = (kept: boolean, equal: boolean): RecordStatus => (!kept ? 'absent' : equal ? 'match' : 'mismatch');

/** Canonical JSON of `value`, or null when it has none (a pack changed by the owner may hold anything). */
function canonicalOrNull(value: unknown): string | null {
  try {
    return value === undefined ? null : canonicalJson(value);
  } catch {
    return null;
  }
}

/** Whether `inputs` hashes (RFC 8785, SHA-256) to the inputs_sha256 of `provenance`. */
const derivedFrom = (provenance: unknown, inputs: unknown) => {
  const canonical = canonicalOrNull(inputs);
  return canonical !== null && sha256Hex(canonical) === at(provenance, 'inputs_sha256');
};

/** The decisions as a sorted list of canonical records: the same decisions in any order compare equal. */
function decisionSet(decisions: unknown): string[] | null {
  if (!Array.isArray(decisions)) return null;
  const out = decisions.map(canonicalOrNull);
  return out.every((d) => d !== null) ? (out as string[]).sort() : null;
}

/**
 * The run's input as the evidence step read it: parsed by the submission schema (which trims text, say).
 * The API stores the parsed submission, so the input as stored is what the step read; the parse covers
 * an input stored before a transform was added. Null when today's schema refuses the input — a run
 * submitted before a check was added — which is then compared as stored only.
 */
function parsedInput(input: unknown): string | null {
  const parsed = submissionSchema.safeParse(input);
  return parsed.success ? canonicalOrNull(parsed.data) : null;
}

function runMatches(content: unknown, r: RecordColumns): boolean {
  const run = at(content, 'run');
  const submission = canonicalOrNull(at(content, 'submission'));
  return (
    at(run, 'workflow') === r.run_workflow &&
    at(run, 'correlation_id') === r.run_correlation_id &&
    at(run, 'submitted_by') === r.run_principal &&
    at(run, 'submitted_at') === r.run_submitted_at &&
    submission !== null &&
    (submission === canonicalOrNull(r.run_input) || submission === parsedInput(r.run_input))
  );
}

/**
 * Whether the packet's own decisions allow its outcome: `rejected`, a rejection; `approved`, no
 * rejection and at least `required_approvals` approvals (distinct approvers: the decisions' key), none
 * of them by the run's submitter, a `kind: system` decision only in a packet that required none (class A)
 * and by SYSTEM_APPROVER; each decision before the SLA deadline. The request's decision rows are compared with the
 * packet's, but the application role may insert decisions and set the request's status, so rows and
 * packet can be made to agree on an approval that was never given: one approver of a class C request
 * (four-eyes), the submitter approving their own run, an approval after the deadline — decisions the
 * API refuses.
 */
function decisionsAllow(packet: unknown, outcome: unknown, submitter: unknown): boolean {
  const decisions = at(packet, 'decisions');
  const required = at(packet, 'required_approvals');
  if (!Array.isArray(decisions) || typeof required !== 'number') return false;
  const by = (d: unknown) => at(d, 'decided_by');
  if (new Set(decisions.map(by)).size !== decisions.length) return false;
  // A system decision is the platform's only as the approval step writes one: class A (no approval
  // required), by SYSTEM_APPROVER; and SYSTEM_APPROVER decides nothing else (the API refuses that sub,
  // approval.service.ts). The application role may insert decision rows of either kind: one of kind
  // system in a B or C packet would skip the submitter check and count as an approver no human gave.
  const platforms = (d: unknown) => at(d, 'kind') === 'system' || by(d) === SYSTEM_APPROVER;
  if (decisions.some((d) => platforms(d) && (required !== 0 || by(d) !== SYSTEM_APPROVER || at(d, 'kind') !== 'system'))) return false;
  if (decisions.some((d) => at(d, 'kind') !== 'system' && by(d) === submitter)) return false;
  // Each before the SLA deadline: the API refuses a decision from the deadline on (the request reads expired).
  const deadline = at(packet, 'sla_deadline');
  if (deadline !== null && (typeof deadline !== 'string' || !decisions.every((d) => Date.parse(String(at(d, 'decided_at'))) < Date.parse(deadline)))) return false;
  const approvals = decisions.filter((d) => at(d, 'decision') === 'approve').length;
  const rejections = decisions.filter((d) => at(d, 'decision') === 'reject').length;
  return outcome === 'rejected' ? rejections > 0 : rejections === 0 && approvals >= required;
}

function approvalMatches(content: unknown, r: RecordColumns): boolean {
  const packet = at(content, 'approval_packet');
  const outcome = at(content, 'outcome');
  const recorded = decisionSet(r.approval_decisions ?? []);
  return (
    at(packet, 'approval_request_id') === r.approval_id &&
    at(packet, 'approval_class') === r.approval_class &&
    at(packet, 'required_approvals') === r.approval_required &&
    r.approval_reasons_equal === true &&
    (at(packet, 'sla_deadline') ?? null) === r.approval_sla_deadline &&
    (outcome === 'approved' || outcome === 'rejected') &&
    at(packet, 'outcome') === outcome &&
    r.approval_status === outcome &&
    at(content, 'run', 'submitted_by') === r.approval_submitted_by &&
    recorded !== null &&
    canonicalOrNull(decisionSet(at(packet, 'decisions'))) === canonicalOrNull(recorded) &&
    decisionsAllow(packet, outcome, at(content, 'run', 'submitted_by'))
  );
}

/**
 * What the packet's policy implies, compared with what the packet and its request say: the class
 * (so the approvals needed: the four-eyes of class C) and the currency mismatch `classify` gives for
 * the pack's economics model under that policy, and the SLA deadline, the request's creation plus the
 * class's SLA (the approval step reckons both from one time).
 */
function policyImplies(content: unknown, policy: ApprovalPolicy, r: RecordColumns): boolean {
  const packet = at(content, 'approval_packet');
  const econ = at(content, 'economics_model');
  const [cost, payback, currency] = [at(econ, 'cost'), at(econ, 'payback_months'), at(econ, 'currency')];
  if (typeof cost !== 'number' || (payback !== null && typeof payback !== 'number') || typeof currency !== 'string') return false;
  let c: ReturnType<typeof classify>;
  try {
    // A cost finer than the policy currency's minor unit was recorded before costs were held to it
    // (every currency was rounded to 2 decimals) and classified as written, compared as doubles: a JPY
    // cost of 50,000.4 was above a 50,000 bound. Today's classify would round it to 50,000 and read a
    // genuine class B pack as a mismatch. Compared at its own decimals, it is classified as it was; a
    // cost recorded since is a whole number of minor units, so its class is today's.
    const digits = Math.max(minorDigits(policy.currency), asWritten(cost).scale);
    // The payback by the rule the packet names (its provenance's method): since CLASSIFIED_EXACTLY the
    // exact ratio of the pack's submission (what content.economics_model was derived from, compared as
    // records.economics_model), before it the 2-decimal payback_months, on which 6.004 months was 6 and
    // class A. Any other method is no rule of ours. Only old packets name the old rule; a new one that
    // does still needs the class its request was written with (records.approval), which the application
    // role cannot update (roles.ts) — see ADR 0010, "classified on the exact payback".
    const method = at(packet, 'provenance', 'method');
    if (method === CLASSIFIED_EXACTLY) {
      const economics = economicsInput.safeParse(at(content, 'submission', 'economics'));
      if (!economics.success) return false;
      c = classify({ cost, payback_months: payback, currency }, policy, { digits, payback: paybackRatio(economics.data) });
    } else if (method === CLASSIFIED_ON_ROUNDED_PAYBACK) c = classify({ cost, payback_months: payback, currency }, policy, { digits });
    else return false;
  } catch {
    return false;
  }
  const mismatch = at(packet, 'currency_mismatch');
  const same = c.cls === at(packet, 'approval_class') && c.required === at(packet, 'required_approvals') && (mismatch === undefined || canonicalOrNull(mismatch) === canonicalOrNull(c.currencyMismatch));
  if (!same) return false;
  const deadline = c.slaSeconds === null ? null : r.approval_created_at === null ? undefined : new Date(Date.parse(r.approval_created_at) + c.slaSeconds * 1000).toISOString();
  return c.cls === r.approval_class && c.required === r.approval_required && deadline === r.approval_sla_deadline;
}

/** A policy version as a row records it (the current row, or its history row): the fields a packet's policy is compared with. */
interface VersionRow {
  a_cost: number | null;
  a_payback: number | null;
  c_cost: number | null;
  c_payback: number | null;
  sla_b: number | null;
  sla_c: number | null;
  currency: string | null;
  updated_at: string | null;
  updated_by: string | null;
  approved_by: string | null;
}

const currentRow = (r: RecordColumns): VersionRow => ({
  a_cost: r.policy_a_cost, a_payback: r.policy_a_payback, c_cost: r.policy_c_cost, c_payback: r.policy_c_payback, sla_b: r.policy_sla_b, sla_c: r.policy_sla_c,
  currency: r.policy_currency, updated_at: r.policy_updated_at, updated_by: r.policy_updated_by, approved_by: r.policy_approved_by,
});
const historyRow = (r: RecordColumns): VersionRow => ({
  a_cost: r.history_a_cost, a_payback: r.history_a_payback, c_cost: r.history_c_cost, c_payback: r.history_c_payback, sla_b: r.history_sla_b, sla_c: r.history_sla_c,
  currency: r.history_currency, updated_at: r.history_updated_at, updated_by: r.history_updated_by, approved_by: r.history_approved_by,
});

/** Whether `row` records the packet's policy: its thresholds, SLAs and currency, when and by whom it was set and approved. */
function recordsPolicy(row: VersionRow, applied: { policy: unknown; updated_at?: string | null | undefined; updated_by?: string | null | undefined; approved_by?: string | null | undefined }): boolean {
  const body = {
    class_a_max_cost: Number(row.a_cost),
    class_a_max_payback_months: Number(row.a_payback),
    class_c_min_cost: Number(row.c_cost),
    class_c_min_payback_months: Number(row.c_payback),
    sla_b_seconds: Number(row.sla_b),
    sla_c_seconds: Number(row.sla_c),
    currency: row.currency,
  };
  return (
    canonicalOrNull(body) === canonicalOrNull(applied.policy) &&
    applied.updated_at === row.updated_at &&
    (applied.updated_by ?? null) === row.updated_by &&
    (applied.approved_by ?? null) === row.approved_by
  );
}

/**
 * The approval packet's policy, compared with what it decided (policyImplies) and with the policy it
 * names. The request records the version its step classified by (`approval_requests.policy_version`,
 * which the application role may not update): the packet must name that version, so one that drops its
 * policy or version, or names another, is a mismatch. A request opened before it was recorded (null)
 * holds the packet to nothing more: a packet without a policy or version reads absent, as before. The
 * version named is the platform defaults' for 0 (their SLAs are configuration, not recorded); else the
 * tenant's history row of that version (approval_policy_versions) and, while it is still in force, the
 * policy row — each that records it must agree. Neither: `absent` when the version is older than the
 * tenant's history (the first version it records, the one in force when the history began, or the
 * policy row's), a version replaced before it was kept; otherwise a version never reached, `mismatch`.
 */
function approvalPolicyStatus(content: unknown, r: RecordColumns): RecordStatus {
  const recorded = at(content, 'approval_packet', 'policy');
  // No request to hold it to (`approval` absent: the pack is not valid).
  if (r.approval_id === null) return 'absent';
  if (r.approval_policy_version !== null && at(recorded, 'version') !== Number(r.approval_policy_version)) return 'mismatch';
  // A packet from before the policy was recorded (its request too: it recorded no version).
  if (recorded === undefined) return 'absent';
  const parsed = appliedPolicySchema.safeParse(recorded);
  if (!parsed.success) return 'mismatch';
  const applied = parsed.data;
  const body = applied.policy;
  const policy: ApprovalPolicy = {
    classAMaxCost: body.class_a_max_cost,
    classAMaxPaybackMonths: body.class_a_max_payback_months,
    classCMinCost: body.class_c_min_cost,
    classCMinPaybackMonths: body.class_c_min_payback_months,
    slaBSeconds: body.sla_b_seconds,
    slaCSeconds: body.sla_c_seconds,
    // Packets written before policies had a currency: their thresholds applied to any.
    currency: body.currency ?? (at(content, 'economics_model', 'currency') as string),
  };
  if (!policyImplies(content, policy, r)) return 'mismatch';
  // Packets written before the policy's version was recorded: which row they name cannot be told.
  if (applied.version === undefined) return 'absent';
  if (applied.version === 0) {
    const defaults = policyToBody({ ...DEFAULT_POLICY, slaBSeconds: body.sla_b_seconds, slaCSeconds: body.sla_c_seconds });
    const same =
      applied.source === 'default' &&
      applied.updated_at === null &&
      (applied.updated_by ?? null) === null &&
      (applied.approved_by ?? null) === null &&
      canonicalOrNull(defaults) === canonicalOrNull({ ...body, currency: policy.currency });
    return same ? 'match' : 'mismatch';
  }
  if (applied.source !== 'tenant') return 'mismatch';
  const rows: VersionRow[] = [];
  if (r.history_version !== null) rows.push(historyRow(r));
  if (r.policy_version !== null && Number(r.policy_version) === applied.version) rows.push(currentRow(r));
  if (rows.length === 0) {
    const known = [r.history_first, r.policy_version].filter((v) => v !== null).map(Number);
    return known.length > 0 && Math.min(...known) > applied.version ? 'absent' : 'mismatch';
  }
  const named = { policy: body, updated_at: applied.updated_at, updated_by: applied.updated_by, approved_by: applied.approved_by };
  return rows.every((row) => recordsPolicy(row, named)) ? 'match' : 'mismatch';
}

/** The pack's content compared with its run's records, read by RECORD_COLUMNS. */
export function compareRecords(content: unknown, r: RecordColumns): EvidenceRecords {
  const submission = at(content, 'submission');
  const dossier = at(content, 'partner_dossier');
  const economics = at(content, 'economics_model');
  return {
    run: status(r.run_kept, runMatches(content, r)),
    partner_dossier: status(r.dossier_kept, r.dossier_equal === true && r.dossier_columns_equal === true && derivedFrom(at(dossier, 'profile', 'provenance'), at(submission, 'partner'))),
    economics_model: status(
      r.economics_kept,
      r.economics_equal === true && r.economics_columns_equal === true && derivedFrom(at(economics, 'provenance'), { economics: at(submission, 'economics'), currency: at(submission, 'currency') }),
    ),
    approval: status(r.approval_id !== null, approvalMatches(content, r)),
    approval_policy: approvalPolicyStatus(content, r),
  };
}

/**
 * Whether the records allow the pack to be valid: the three domain records match, the run row matches
 * or was deleted by retention, and the approval policy does not disagree (absent: a version replaced
 * since, or a packet from before the policy was recorded).
 */
export const recordsAgree = (records: EvidenceRecords): boolean =>
  records.partner_dossier === 'match' && records.economics_model === 'match' && records.approval === 'match' && records.run !== 'mismatch' && records.approval_policy !== 'mismatch';
