import { describe, expect, it } from 'vitest';
import { compareRecords, recordsAgree, type RecordColumns } from '../../src/modules/evidence/evidence-records.ts';
import { buildDossier } from '../../src/modules/golden-path/partner-dossier.step.ts';
import { buildEconomics } from '../../src/modules/golden-path/economics-model.step.ts';

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
  partner_dossier: buildDossier(submission),
  economics_model: buildEconomics(submission.economics, submission.currency),
  approval_packet: { approval_request_id: 'a-1', approval_class: 'C', reasons: ['x'], required_approvals: 2, sla_deadline: '2026-12-08T09:00:00.001Z', outcome: 'approved', decisions },
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
  economics_kept: true,
  economics_equal: true,
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
});
