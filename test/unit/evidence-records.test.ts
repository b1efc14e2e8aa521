import { describe, expect, it } from 'vitest';
import { compareRecords, recordsAgree, type RecordColumns } from '../../src/modules/evidence/evidence-records.ts';
import { buildDossier } from '../../src/modules/golden-path/partner-dossier.step.ts';
import { buildEconomics } from '../../src/modules/golden-path/economics-model.step.ts';

/** The database's time a step would stamp its output with (StepContext.now). */
const PRODUCED_AT = new Date('2026-12-01T12:00:00.000Z');

/**
 * The comparison of a pack's content with its run's records (evidence-records.ts), on records as the
 * verification's statement reads them: what a genuine pack and its records look like, and what of each
 * is compared. The statement itself, against real rows and forged packs: evidence-records.test.ts.
 */
const submission = {
  partner: { name: 'Acme Trading', country: 'SA', sector: 'logistics', website: 'https://acme.example', registration_number: '1010101010' },
  economics: { expected_deals_per_year: 12, average_deal_value: 250000, win_rate: 0.3, gross_margin: 0.35, onboarding_cost: 40000, enablement_cost: 15000, annual_support_cost: 10000 },
  currency: 'SAR',
};
const decisions = [
  { decided_by: 'approver-1', decision: 'approve', comment: null, decided_at: '2026-12-05T10:00:00.123Z', kind: 'human' },
  { decided_by: 'approver-2', decision: 'approve', comment: 'ok', decided_at: '2026-12-05T10:00:00.123Z', kind: 'human' },
];
const content = {
  schema: 'dealix.evidence-pack/v1',
  run: { id: 'r', tenant_id: 't', workflow: 'golden-path@v1', correlation_id: 'c-1', submitted_by: 'submitter-1', submitted_at: '2026-12-05T09:00:00.001Z' },
  submission,
  partner_dossier: buildDossier(submission, PRODUCED_AT),
  economics_model: buildEconomics(submission.economics, submission.currency, PRODUCED_AT),
  approval_packet: {
    approval_request_id: 'a-1',
    approval_class: 'C',
    reasons: ['x'],
    required_approvals: 2,
    sla_deadline: '2026-12-08T09:00:00.001Z',
    outcome: 'approved',
    decisions,
    // Every packet's method: approval-policy@1 until it was classified on the exact payback (@2).
    provenance: { source: 'policy', method: 'approval-policy@1', inputs_sha256: '0'.repeat(64), producer_version: 'golden-path@1', produced_at: '2026-12-05T09:00:00.001Z' },
  },
  outcome: 'approved',
};
const records: RecordColumns = {
  run_kept: true,
  run_workflow: 'golden-path@v1',
  run_correlation_id: 'c-1',
  run_principal: 'submitter-1',
  run_submitted_at: '2026-12-05T09:00:00.001Z',
  run_input: submission,
  dossier_kept: true,
  dossier_equal: true,
  dossier_columns_equal: true,
  economics_kept: true,
  economics_equal: true,
  economics_columns_equal: true,
  approval_id: 'a-1',
  approval_class: 'C',
  approval_required: 2,
  approval_status: 'approved',
  approval_submitted_by: 'submitter-1',
  approval_reasons_equal: true,
  approval_sla_deadline: '2026-12-08T09:00:00.001Z',
  approval_decisions: [...decisions].reverse(),
  approval_created_at: '2026-12-05T09:00:00.001Z',
  policy_version: null,
  policy_a_cost: null,
  policy_a_payback: null,
  policy_c_cost: null,
  policy_c_payback: null,
  policy_sla_b: null,
  policy_sla_c: null,
  policy_currency: null,
  policy_updated_at: null,
  policy_updated_by: null,
  policy_approved_by: null,
  approval_policy_version: null,
  history_version: null,
  history_a_cost: null,
  history_a_payback: null,
  history_c_cost: null,
  history_c_payback: null,
  history_sla_b: null,
  history_sla_c: null,
  history_currency: null,
  history_updated_at: null,
  history_updated_by: null,
  history_approved_by: null,
  history_first: null,
};
// The packet records no policy (as packets written before it did): approval_policy absent, which agrees.
const ALL_MATCH = { run: 'match', partner_dossier: 'match', economics_model: 'match', approval: 'match', approval_policy: 'absent' };

describe('compareRecords', () => {
  it('a genuine pack: every record matches (decisions in any order), and the run absent still agrees', () => {
    expect(compareRecords(content, records)).toEqual(ALL_MATCH);
    const retained = compareRecords(content, { ...records, run_kept: false, run_workflow: null, run_correlation_id: null, run_principal: null, run_submitted_at: null, run_input: null });
    expect(retained).toEqual({ ...ALL_MATCH, run: 'absent' });
    expect(recordsAgree(retained)).toBe(true);
  });

  it('the run input as stored before a transform: a name stored untrimmed matches the trimmed submission the step read', () => {
    const stored = { ...submission, partner: { ...submission.partner, name: ' Acme Trading ' } };
    expect(compareRecords(content, { ...records, run_input: stored }).run).toBe('match');
    expect(compareRecords(content, { ...records, run_input: { ...submission, currency: 'USD' } }).run).toBe('mismatch');
  });

  it.each<[string, Partial<RecordColumns> | ((c: typeof content) => unknown), Partial<Record<string, string>>]>([
    ['the stored dossier differs', { dossier_equal: false }, { partner_dossier: 'mismatch' }],
    ['no dossier stored', { dossier_kept: false, dossier_equal: null }, { partner_dossier: 'absent' }],
    ["a column of the stored dossier differs (partner_name, country, completeness_score)", { dossier_columns_equal: false }, { partner_dossier: 'mismatch' }],
    ["a column of the stored model differs (currency, cost, payback_months)", { economics_columns_equal: false }, { economics_model: 'mismatch' }],
    ['no columns compared (null)', { economics_columns_equal: null }, { economics_model: 'mismatch' }],
    ['the submission is not what the dossier and model were derived from', (c) => ({ ...c, submission: { ...c.submission, partner: { ...c.submission.partner, sector: 'arms' }, currency: 'USD' } }), { run: 'mismatch', partner_dossier: 'mismatch', economics_model: 'mismatch' }],
    ['a decision missing from the request', { approval_decisions: [decisions[0]!] }, { approval: 'mismatch' }],
    ['a decision at another millisecond', { approval_decisions: [decisions[0]!, { ...decisions[1]!, decided_at: '2026-12-05T10:00:00.124Z' }] }, { approval: 'mismatch' }],
    ['the request still pending', { approval_status: 'pending' }, { approval: 'mismatch' }],
    ['the request rejected, the pack approved', { approval_status: 'rejected' }, { approval: 'mismatch' }],
    ['another class', { approval_class: 'B' }, { approval: 'mismatch' }],
    ['another submitter on the request', { approval_submitted_by: 'someone' }, { approval: 'mismatch' }],
    ['another correlation id on the run', { run_correlation_id: 'c-2' }, { run: 'mismatch' }],
    ['a pack with no approval packet', (c) => ({ ...c, approval_packet: undefined }), { approval: 'mismatch' }],
    ['content that is no object at all', () => 'x', { run: 'mismatch', partner_dossier: 'mismatch', economics_model: 'mismatch', approval: 'mismatch' }],
  ])('%s: reported, and the pack does not agree with its records', (_what, change, expected) => {
    const [c, r] = typeof change === 'function' ? [change(content), records] : [content, { ...records, ...change }];
    const compared = compareRecords(c, r);
    expect(compared).toEqual({ ...ALL_MATCH, ...expected });
    expect(recordsAgree(compared)).toBe(false);
  });

  // The application role may insert decision rows (and the packet with them): a `kind: system` decision is the
  // platform's only in a class A packet (no approval required), by SYSTEM_APPROVER; it never counts towards B/C.
  it.each([
    ['by SYSTEM_APPROVER', 'system'],
    ['under another name', 'approver-9'],
    ['by the submitter', 'submitter-1'],
  ])('a class C packet approved by one human and a system-kind decision %s: approval mismatch', (_what, by) => {
    const ds = [decisions[0]!, { decided_by: by, decision: 'approve', comment: null, decided_at: '2026-12-05T10:00:00.123Z', kind: 'system' }];
    const compared = compareRecords({ ...content, approval_packet: { ...content.approval_packet, decisions: ds } }, { ...records, approval_decisions: ds });
    expect(compared).toEqual({ ...ALL_MATCH, approval: 'mismatch' });
    // The same two decisions both human (and distinct, neither the submitter's) are four eyes.
    const humans = ds.map((d) => ({ ...d, kind: 'human' }));
    const genuine = compareRecords({ ...content, approval_packet: { ...content.approval_packet, decisions: humans } }, { ...records, approval_decisions: humans });
    expect(genuine.approval).toBe(by === 'approver-9' ? 'match' : 'mismatch');
  });

  // Before costs were held to their currency's minor unit (15b598d), the economics model rounded every
  // currency to 2 decimals, and classify compared cost and thresholds as doubles (until d891280): a JPY
  // cost of 50,000.4 was above a 50,000 class A bound, class B. Today's classify rounds it to 50,000
  // first (class A), which no run since can tell apart — its cost is a whole number of yen.
  describe('a pack written before costs were held to the minor unit', () => {
    const economics_model = { ...content.economics_model, currency: 'JPY', cost: 50000.4, payback_months: 3 };
    const thresholds = { class_a_max_cost: 50000, class_a_max_payback_months: 6, class_c_min_cost: 250000, class_c_min_payback_months: 24, sla_b_seconds: 86400, sla_c_seconds: 259200 };
    const packet = (cls: 'A' | 'B', policy: unknown) => ({
      ...content.approval_packet,
      approval_class: cls,
      required_approvals: cls === 'A' ? 0 : 1,
      sla_deadline: cls === 'A' ? null : '2026-12-06T09:00:00.001Z',
      decisions: cls === 'A' ? [] : [decisions[0]],
      policy,
    });
    const rows = (cls: 'A' | 'B'): RecordColumns => ({
      ...records,
      approval_class: cls,
      approval_required: cls === 'A' ? 0 : 1,
      approval_sla_deadline: cls === 'A' ? null : '2026-12-06T09:00:00.001Z',
      approval_created_at: '2026-12-05T09:00:00.001Z',
      approval_decisions: cls === 'A' ? [] : [decisions[0]],
      policy_version: 1,
      policy_a_cost: 50000,
      policy_a_payback: 6,
      policy_c_cost: 250000,
      policy_c_payback: 24,
      policy_sla_b: 86400,
      policy_sla_c: 259200,
      policy_currency: 'JPY',
      policy_updated_at: '2026-12-03T08:00:00.000Z',
      policy_updated_by: 'admin-1',
      policy_approved_by: null,
    });
    const tenantPolicy = { source: 'tenant', policy: { ...thresholds, currency: 'JPY' }, updated_at: '2026-12-03T08:00:00.000Z', updated_by: 'admin-1', version: 1, approved_by: null };
    const noCurrency = { source: 'default', policy: thresholds, updated_at: null };

    it.each([
      ['under a tenant policy in yen (its version recorded)', 'match', tenantPolicy],
      ['under the defaults, recorded before policies had a currency (applied to any)', 'absent', noCurrency],
    ])('class B as it was classified then, %s: approval_policy %s, the pack valid', (_, expected, policy) => {
      const genuine = { ...content, economics_model, approval_packet: packet('B', policy) };
      const result = compareRecords(genuine, rows('B'));
      expect(result.approval_policy).toBe(expected);
      expect(recordsAgree(result)).toBe(true);
    });

    it('the request records the version its step classified by: a packet naming none, or another, is a mismatch; a request from before (null) holds it to nothing', () => {
      const genuine = { ...content, economics_model, approval_packet: packet('B', tenantPolicy) };
      expect(compareRecords(genuine, { ...rows('B'), approval_policy_version: 1 }).approval_policy).toBe('match');
      expect(compareRecords(genuine, { ...rows('B'), approval_policy_version: 2 }).approval_policy).toBe('mismatch');
      const { policy: _, ...bare } = genuine.approval_packet;
      const { version: __, ...unversioned } = tenantPolicy;
      for (const forged of [bare, { ...genuine.approval_packet, policy: unversioned }]) {
        expect(compareRecords({ ...genuine, approval_packet: forged }, { ...rows('B'), approval_policy_version: 1 }).approval_policy).toBe('mismatch');
        expect(compareRecords({ ...genuine, approval_packet: forged }, rows('B')).approval_policy).toBe('absent');
      }
    });

    it('a version replaced since is compared with its history row; absent only when it is older than the history', () => {
      const genuine = { ...content, economics_model, approval_packet: packet('B', tenantPolicy) };
      // Version 2 in force (its SLA shortened); version 1 kept in the history.
      const replaced: RecordColumns = { ...rows('B'), policy_version: 2, policy_sla_b: 3600, policy_updated_at: '2026-12-04T08:00:00.000Z' };
      const history: RecordColumns = {
        ...replaced,
        history_version: 1,
        history_a_cost: 50000,
        history_a_payback: 6,
        history_c_cost: 250000,
        history_c_payback: 24,
        history_sla_b: 86400,
        history_sla_c: 259200,
        history_currency: 'JPY',
        history_updated_at: '2026-12-03T08:00:00.000Z',
        history_updated_by: 'admin-1',
        history_approved_by: null,
        history_first: 1,
      };
      expect(compareRecords(genuine, history).approval_policy).toBe('match');
      expect(compareRecords(genuine, { ...history, history_c_cost: 900000 }).approval_policy).toBe('mismatch');
      expect(compareRecords(genuine, { ...history, history_approved_by: 'admin-9' }).approval_policy).toBe('mismatch');
      // The history and the row in force both record version 1: both must agree.
      expect(compareRecords(genuine, { ...history, policy_version: 1, policy_sla_b: 86400, policy_updated_at: '2026-12-03T08:00:00.000Z' }).approval_policy).toBe('match');
      expect(compareRecords(genuine, { ...history, policy_version: 1, policy_updated_at: '2026-12-03T08:00:00.000Z' }).approval_policy).toBe('mismatch');
      // No row of version 1: older than the history (it began at 2) reads absent; otherwise never reached.
      expect(compareRecords(genuine, { ...replaced, history_first: 2 }).approval_policy).toBe('absent');
      expect(compareRecords(genuine, replaced).approval_policy).toBe('absent');
      expect(compareRecords(genuine, { ...replaced, history_first: 1 }).approval_policy).toBe('mismatch');
      expect(compareRecords(genuine, { ...replaced, policy_version: null }).approval_policy).toBe('mismatch');
    });

    it('the class today\'s rounding would give (A) is not what its policy gave it: mismatch', () => {
      const forged = { ...content, economics_model, approval_packet: packet('A', tenantPolicy) };
      expect(compareRecords(forged, rows('A')).approval_policy).toBe('mismatch');
    });
  });
  // The reviewer's case: gross profit 1,000 a month and a cost of 6,004, payback 6.004 months, shown as 6.
  // Until approval-policy@2 the class was decided on the 6 (class A, approved by the system); since, on
  // the exact ratio (class B). A pack says which by its packet's provenance method, and each is verified
  // by its own rule, the exact one from the pack's submission.
  describe('a pack classified on the 2-decimal payback (approval-policy@1), and one on the exact payback (approval-policy@2)', () => {
    const economics = { expected_deals_per_year: 1, average_deal_value: 40000, win_rate: 1, gross_margin: 0.3, onboarding_cost: 6004, enablement_cost: 0, annual_support_cost: 0 };
    const sub = { ...submission, economics };
    const defaults = {
      source: 'default',
      policy: { class_a_max_cost: 50000, class_a_max_payback_months: 6, class_c_min_cost: 250000, class_c_min_payback_months: 24, sla_b_seconds: 86400, sla_c_seconds: 259200, currency: 'SAR' },
      version: 0,
      updated_at: null,
      updated_by: null,
      approved_by: null,
    };
    const system = { decided_by: 'system', decision: 'approve', comment: 'class A: approved automatically by policy', decided_at: '2026-12-05T09:00:00.001Z', kind: 'system' };
    const of = (cls: 'A' | 'B') => ({ required: cls === 'A' ? 0 : 1, deadline: cls === 'A' ? null : '2026-12-06T09:00:00.001Z', decisions: cls === 'A' ? [system] : [decisions[0]!] });
    const pack = (cls: 'A' | 'B', method: string) => ({
      ...content,
      submission: sub,
      partner_dossier: buildDossier(sub, PRODUCED_AT),
      economics_model: buildEconomics(economics, 'SAR', PRODUCED_AT),
      approval_packet: {
        ...content.approval_packet,
        approval_class: cls,
        required_approvals: of(cls).required,
        sla_deadline: of(cls).deadline,
        decisions: of(cls).decisions,
        policy: defaults,
        currency_mismatch: null,
        provenance: { ...content.approval_packet.provenance, method },
      },
    });
    const rows = (cls: 'A' | 'B'): RecordColumns => ({
      ...records,
      run_input: sub,
      approval_class: cls,
      approval_required: of(cls).required,
      approval_sla_deadline: of(cls).deadline,
      approval_decisions: of(cls).decisions,
      approval_created_at: '2026-12-05T09:00:00.001Z',
    });

    it('genuine, either rule: every record matches, the policy included, and the pack is valid', () => {
      for (const [cls, method] of [['A', 'approval-policy@1'], ['B', 'approval-policy@2']] as const) {
        const result = compareRecords(pack(cls, method), rows(cls));
        expect(result, method).toEqual({ ...ALL_MATCH, approval_policy: 'match' });
        expect(recordsAgree(result)).toBe(true);
      }
    });

    it('a class the rule it names does not give is a mismatch: A on the exact payback, B on the rounded one', () => {
      expect(compareRecords(pack('A', 'approval-policy@2'), rows('A')).approval_policy).toBe('mismatch');
      expect(compareRecords(pack('B', 'approval-policy@1'), rows('B')).approval_policy).toBe('mismatch');
    });

    it('on the exact rule, a submission that is no economics to classify is a mismatch, not an error', () => {
      const broken = { ...pack('B', 'approval-policy@2'), submission: { ...sub, economics: { ...economics, win_rate: 'high' } } };
      expect(compareRecords(broken, rows('B')).approval_policy).toBe('mismatch');
    });

    it('a method that is no rule of ours is a mismatch', () => {
      expect(compareRecords(pack('A', 'approval-policy@0'), rows('A')).approval_policy).toBe('mismatch');
    });
  });
});
