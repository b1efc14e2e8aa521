/**
 * Migration partner_offboarding_claims_backfill against the real stack (PostgreSQL as the application
 * role, the API in this process, no worker: submitted runs stay `pending`): offboardings queued before
 * the deploy that added the claims hold no claim — simulated by submitting them and removing their
 * claim as the superuser — and the migration, applied again as the owner (`migrate`, its row removed
 * from the migrations table), claims each such partner for one of its runs still in flight, so a new
 * submission of it is refused 409 naming that run, as for any claim.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, newTenant, OFFBOARDING_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { migrate } from '../../src/platform/db/migrate.ts';
import { entities } from '../../src/entities.ts';
import { Migration20261205143000_partner_offboarding_claims_backfill as Backfill } from '../../migrations/Migration20261205143000_partner_offboarding_claims_backfill.ts';
import type { AbstractSqlDriver } from '@mikro-orm/postgresql';
import pg from 'pg';

const LONG = 120_000;
const BASE = '/api/v1/partner-offboarding';
const BACKFILL = 'Migration20261205143000_partner_offboarding_claims_backfill';

describe('claims backfilled for offboardings queued before the claims', () => {
  let stack: TestStack;
  const tenant = newTenant();
  const other = newTenant();
  const tok: Record<string, string> = {};

  beforeAll(async () => {
    stack = await startStack();
    tok[tenant] = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
    tok[other] = await stack.token({ tenantId: other, sub: 'submitter-1' });
  }, LONG);
  afterAll(async () => {
    await stack?.stop();
  });

  const post = (t: string, reference: string) =>
    api(stack, 'POST', `${BASE}/run`, { token: tok[t]!, body: { ...OFFBOARDING_SUBMISSION, partner: { reference, name: 'Acme' } }, headers: { 'Idempotency-Key': randomUUID() } });
  async function submit(t: string, reference: string): Promise<string> {
    const res = await post(t, reference);
    expect(res.status, res.text).toBe(202);
    return res.json.run_id as string;
  }
  /** An offboarding as a release before the claims left it: accepted, queued, and no claim of its partner. */
  async function queuedBeforeClaims(t: string, reference: string, status = 'pending'): Promise<string> {
    const id = await submit(t, reference);
    await stack.db.admin(`delete from partner_offboarding_claims where tenant_id = $1 and partner_reference = $2`, [t, reference]);
    if (status !== 'pending') await stack.db.admin(`update durable_runs set status = $2, completed_at = now() where id = $1`, [id, status]);
    return id;
  }
  const claims = async () =>
    Object.fromEntries(
      (await stack.db.admin(`select tenant_id, partner_reference, run_id, id from partner_offboarding_claims order by tenant_id, partner_reference`)).rows.map((r) => [`${r.tenant_id === tenant ? 'own' : 'other'}:${r.partner_reference}`, r]),
    );

  it("run by a role that reads no other tenant's runs (not a member of dealix_system, inherited): fails, naming the grant, rather than claim nothing and be recorded as applied", { timeout: LONG }, async () => {
    const queued = await queuedBeforeClaims(tenant, 'P-UNSEEN');
    const orm = stack.container.orm;
    const migration = new Backfill(orm.em.getDriver() as unknown as AbstractSqlDriver, orm.config);
    await migration.up();
    const [sql, ...more] = migration.getQueries();
    expect(typeof sql === 'string' && more.length === 0).toBe(true);
    // The application role: a member of dealix_system NOINHERIT (SET ROLE only), so its sweep policy is not its own.
    const app = new pg.Client({ connectionString: stack.db.appUrl });
    await app.connect();
    try {
      expect((await app.query(`select pg_has_role(current_user, 'dealix_system', 'USAGE') as reads`)).rows).toEqual([{ reads: false }]);
      await app.query('begin');
      // Before: it finished without a word, having claimed nothing (the runs of every tenant hidden by RLS).
      await expect(app.query(sql as string)).rejects.toThrow(/GRANT dealix_system TO/);
    } finally {
      await app.query('rollback').catch(() => undefined);
      await app.end();
    }
    expect(Object.keys(await claims()).filter((k) => k.endsWith(':P-UNSEEN'))).toEqual([]);
    // Out of the next test's way (it claims what is in flight): an ended run holds nothing.
    await stack.db.admin(`update durable_runs set status = 'cancelled', completed_at = now() where id = $1`, [queued]);
  });

  it("claims each partner of runs in flight without a claim — its active run first, else its failed one — and leaves claims already taken, and ended runs' partners, alone; a new submission of such a partner is then refused naming its run", { timeout: LONG }, async () => {
    const queued = await queuedBeforeClaims(tenant, 'P-QUEUED');
    // Failed before freeze-partner wrote its record: it holds its partner, as a failed run does (retry it).
    const failedEarly = await queuedBeforeClaims(tenant, 'P-FAILED', 'failed');
    // Two of one partner from before the claims (the second accepted: no claim, no record): the queued one is claimed.
    await queuedBeforeClaims(tenant, 'P-TWO', 'failed');
    const second = await queuedBeforeClaims(tenant, 'P-TWO');
    // Two in flight, the later one past freeze-partner (its record live): the one whose record holds the partner is claimed.
    await queuedBeforeClaims(tenant, 'P-RECORD');
    const frozen = await queuedBeforeClaims(tenant, 'P-RECORD', 'running');
    const record = (run: string, reference: string, status: string) =>
      stack.db.admin(`insert into partner_offboardings (id, tenant_id, run_id, partner_reference, partner_name, reason, status, frozen_at) values ($1, $2, $3, $4, 'Acme', 'inactive', $5, now())`, [randomUUID(), tenant, run, reference, status]);
    await record(frozen, 'P-RECORD', 'frozen');
    // A run whose record was abandoned (the one-per-partner migration's) holds nothing: not claimed.
    await record(await queuedBeforeClaims(tenant, 'P-ABANDONED', 'running'), 'P-ABANDONED', 'abandoned');
    // Ended: nothing to hold (a cancelled run; a completed one's archived record holds its partner itself).
    await queuedBeforeClaims(tenant, 'P-CANCELLED', 'cancelled');
    // Submitted through a producer with spaces around its reference (stored as given): claimed by the reference its steps read.
    const spaced = await queuedBeforeClaims(tenant, 'P-SPACED');
    await stack.db.admin(`update durable_runs set input = jsonb_set(input, '{partner,reference}', '"  P-SPACED "') where id = $1`, [spaced]);
    // Another tenant's run of the same reference: its own claim.
    const theirs = await queuedBeforeClaims(other, 'P-QUEUED');
    // Claimed since the deploy: left as it is.
    const claimed = await submit(tenant, 'P-CLAIMED');
    const before = await claims();
    expect(Object.keys(before)).toEqual(['own:P-CLAIMED']);

    await stack.db.admin(`delete from mikro_orm_migrations where name = $1`, [BACKFILL]);
    const applied = await migrate(stack.config, entities);

    // Before: accepted (202), and one of the two runs failed at freeze-partner once a worker ran them.
    const refusedBy = async (t: string, reference: string) => {
      const res = await post(t, reference);
      expect(res.status, res.text).toBe(409);
      return { code: res.json.code, run_id: res.json.run_id, run_status: res.json.run_status, offboarding_status: res.json.offboarding_status };
    };
    const holder = (run_id: string, run_status = 'pending') => ({ code: 'partner_already_offboarded', run_id, run_status, offboarding_status: null });
    expect(await refusedBy(tenant, 'P-QUEUED')).toEqual(holder(queued));
    expect(await refusedBy(tenant, 'P-FAILED')).toEqual(holder(failedEarly, 'failed'));
    expect(await refusedBy(tenant, 'P-TWO')).toEqual(holder(second));
    expect(await refusedBy(tenant, 'P-SPACED')).toEqual(holder(spaced));
    expect(await refusedBy(tenant, 'P-RECORD')).toEqual({ ...holder(frozen, 'running'), offboarding_status: 'frozen' });
    expect(await refusedBy(other, 'P-QUEUED')).toEqual(holder(theirs));
    const after = await claims();
    expect(Object.fromEntries(Object.entries(after).map(([k, c]) => [k, c.run_id]))).toEqual({
      'own:P-QUEUED': queued,
      'own:P-FAILED': failedEarly,
      'own:P-TWO': second,
      'own:P-SPACED': spaced,
      'own:P-RECORD': frozen,
      'own:P-CLAIMED': claimed,
      'other:P-QUEUED': theirs,
    });
    expect(after['own:P-CLAIMED']).toEqual(before['own:P-CLAIMED']);
    expect(await stack.db.admin(`select relforcerowsecurity from pg_class where relname = 'partner_offboarding_claims'`).then((r) => r.rows)).toEqual([{ relforcerowsecurity: true }]);

    expect(applied).toEqual([BACKFILL]);
    // The cancelled run's partner, and the abandoned record's, were not claimed: a new submission takes each.
    await submit(tenant, 'P-CANCELLED');
    await submit(tenant, 'P-ABANDONED');
  });
});
