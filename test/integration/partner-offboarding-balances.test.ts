/**
 * A partner offboarding's balances, as POST /api/v1/partner-offboarding/run takes them: each amount
 * held to its currency's ISO 4217 minor unit and each currency an ISO 4217 code, as the golden path's
 * submission is (addMinorUnitIssues, its currency list). 0.5 JPY was accepted and settled as 1 JPY,
 * money nobody owes. A refused body is 422 naming the field and persists nothing (no run, no claim,
 * no record, no idempotency key: the key is free for the corrected body). A run stored before the
 * check (a producer's `start`, an older API process) keeps its input and settles as before. Real
 * PostgreSQL as the application role, Redis, the API and the production worker host in this process.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, newTenant, OFFBOARDING_SUBMISSION, offboardingStart, runUsers, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { startRunHost } from '../helpers/run-host.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { PARTNER_OFFBOARDING } from '../../src/modules/partner-offboarding/partner-offboarding.workflow.ts';

const LONG = 120_000;
const BASE = '/api/v1/partner-offboarding';

describe("an offboarding's balances: held to the currency's minor unit, ISO 4217 codes only", () => {
  let stack: TestStack;
  let host: { stop(): Promise<void> } | undefined;
  const tenant = newTenant();
  let token = '';

  beforeAll(async () => {
    stack = await startStack();
    token = (await runUsers(stack, tenant)).submitter;
    host = startRunHost(stack, stack.container.runtime.workflow(PARTNER_OFFBOARDING), `offboarding-balances-${randomUUID().slice(0, 8)}`);
  }, LONG);
  afterAll(async () => {
    await host?.stop();
    await stack?.stop();
  });

  const ofPartner = (balances: unknown) => ({ ...OFFBOARDING_SUBMISSION, partner: { reference: `P-${randomUUID().slice(0, 8)}`, name: 'Acme' }, balances });
  const post = (body: unknown, key = randomUUID()) => api(stack, 'POST', `${BASE}/run`, { token, body, headers: { 'Idempotency-Key': key } });
  /** What the tenant has stored anywhere a submission writes. */
  const stored = async () =>
    (
      await stack.db.admin(
        `select (select count(*)::int from durable_runs where tenant_id = $1) as runs,
                (select count(*)::int from idempotency_keys where tenant_id = $1) as keys,
                (select count(*)::int from partner_offboarding_claims where tenant_id = $1) as claims,
                (select count(*)::int from partner_offboardings where tenant_id = $1) as records`,
        [tenant],
      )
    ).rows[0] as { runs: number; keys: number; claims: number; records: number };
  /** The run's settlement lines, once it completed. */
  const settled = (id: string) =>
    waitFor(
      async () => {
        const res = await api(stack, 'GET', `${BASE}/runs/${id}`, { token });
        if (res.json?.status === 'failed' || res.json?.status === 'cancelled') throw new Error(`offboarding ${id} ended ${res.json.status}: ${res.text}`);
        if (res.json?.status !== 'completed') return undefined;
        return (await stack.db.admin(`select settlement->'lines' as lines from partner_offboardings where run_id = $1`, [id])).rows[0]?.lines as unknown[];
      },
      { timeoutMs: 60_000, intervalMs: 50, what: `offboarding ${id} to complete` },
    );

  it.each([
    ['0.5 JPY (no minor unit)', [{ currency: 'JPY', amount: 0.5 }], [{ path: 'balances.0.amount', message: 'at most 0 decimals in JPY (its ISO 4217 minor unit)' }]],
    [
      'a fourth decimal of KWD, the second balance',
      [{ currency: 'SAR', amount: 10 }, { currency: 'KWD', amount: -1.2345 }],
      [{ path: 'balances.1.amount', message: 'at most 3 decimals in KWD (its ISO 4217 minor unit)' }],
    ],
    ['a code ISO 4217 does not know', [{ currency: 'ZZZ', amount: 1 }], [{ path: 'balances.0.currency', message: 'must be an ISO 4217 currency code (upper case)' }]],
    // The currency's own issue only: it has no minor unit to hold the amount to (as the golden path's).
    ['gold, a code with no minor unit', [{ currency: 'XAU', amount: 0.125 }], [{ path: 'balances.0.currency', message: 'must be an ISO 4217 currency code (upper case)' }]],
    ['a lower-case code', [{ currency: 'sar', amount: 1 }], [{ path: 'balances.0.currency', message: 'must be an ISO 4217 currency code (upper case)' }]],
  ])('%s: 422 naming the field; nothing is stored, and the key is free for the corrected body', { timeout: LONG }, async (_what, balances, errors) => {
    const before = await stored();
    const key = randomUUID();
    const body = ofPartner(balances);
    const res = await post(body, key);
    expect(res.status, res.text).toBe(422);
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(res.json).toMatchObject({ status: 422, code: 'validation_failed' });
    expect(res.json.errors).toEqual(errors);
    expect(await stored()).toEqual(before);
    // The same key with the balances fixed is a new submission (no stored 422 replayed, no idempotency_key_reused).
    const fixed = await post({ ...body, balances: [{ currency: 'SAR', amount: 10 }] }, key);
    expect(fixed.status, fixed.text).toBe(202);
    expect(await settled(fixed.json.run_id)).toEqual([{ currency: 'SAR', net: 10, direction: 'pay_partner' }]);
  });

  it("amounts at the currency's minor unit are accepted (0.01 SAR, 0.001 KWD, whole yen) and settle as written", { timeout: LONG }, async () => {
    const res = await post(
      ofPartner([
        { currency: 'SAR', amount: 0.01 },
        { currency: 'KWD', amount: -0.001 },
        { currency: 'JPY', amount: 500 },
        { currency: 'JPY', amount: 1e3 },
      ]),
    );
    expect(res.status, res.text).toBe(202);
    expect(await settled(res.json.run_id)).toEqual([
      { currency: 'JPY', net: 1500, direction: 'pay_partner' },
      { currency: 'KWD', net: -0.001, direction: 'collect_from_partner' },
      { currency: 'SAR', net: 0.01, direction: 'pay_partner' },
    ]);
  });

  it('a run stored before the check (started by a producer, not through the API) keeps its input: it settles as before, to the minor unit', { timeout: LONG }, async () => {
    const start = offboardingStart(tenant, `P-OLD-${randomUUID().slice(0, 8)}`);
    start.input.balances = [
      { currency: 'JPY', amount: 0.5 },
      { currency: 'XYZ', amount: 0.125 },
    ];
    const { run } = await stack.container.runtime.start(tenantEm(stack.container.orm, tenant), PARTNER_OFFBOARDING, start);
    expect(await settled(run.id)).toEqual([
      { currency: 'JPY', net: 1, direction: 'pay_partner' },
      { currency: 'XYZ', net: 0.13, direction: 'pay_partner' },
    ]);
  });
});
