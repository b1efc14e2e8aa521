/**
 * Partner offboarding's submission guard (refuseHeldPartner) against what may run beside it, each race
 * held open by a real transaction: a submission (the runtime's `start_run`, as the route calls it in
 * its transaction) stopped after its guard, and a cancel, retry or run-retention delete of the holder
 * stopped before its commit. The other side runs meanwhile, and waits on the held one's lock where it
 * must (seen in the lock graph, pg_blocking_pids, never a sleep); then the held transaction commits or rolls back, and
 * the other side's outcome is the one the claim promises. No admission here (its per-tenant lock would
 * queue two submissions of a tenant one behind the other, and they would never meet on the claim): a
 * producer's start, or a tenant whose in-flight cap is off (MAX_RUNS_IN_FLIGHT_PER_TENANT=0), has none.
 * The other way round, a submission held open with its claim holds up nothing of the runs' (a cancel,
 * freeze-partner): the claim row is the submission's only lock besides its own new run, so no lock
 * order with the runs' rows can deadlock.
 * Real PostgreSQL, as the application role under RLS; no worker (the runs stay as the test leaves them).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import type { EntityManager } from '@mikro-orm/postgresql';
import { pino } from 'pino';
import { DurableRuntime, type RunRow } from '../../src/platform/durable/runtime.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { PARTNER_OFFBOARDING } from '../../src/modules/partner-offboarding/partner-offboarding.workflow.ts';
import { freezePartnerStep, refuseHeldPartner } from '../../src/modules/partner-offboarding/partner-offboarding.steps.ts';
import type { StepContext } from '../../src/platform/durable/workflow.ts';
import { api, newTenant, OFFBOARDING_SUBMISSION, offboardingStart, startStack, type TestStack } from '../helpers/stack.ts';
import { requestFingerprint, submissionHash } from '../../src/platform/idempotency/idempotency.service.ts';
import { offboardingSubmission } from '../../src/modules/partner-offboarding/partner-offboarding.schemas.ts';
import { within } from '../helpers/poll.ts';
import { blockedBy } from '../helpers/lock-graph.ts';
import { sent } from '../helpers/pg-messages.ts';
import { sqlState } from '../helpers/sql-state.ts';

const LONG = 120_000;

class RolledBack extends Error {}

/** A transaction held open after `body` until `commit()` or `rollback()`; `ready` is what body returned. */
interface Held<T> {
  ready: Promise<T>;
  /** The held transaction's backend pid (read first in it): the holder in the lock graph. */
  pid: Promise<number>;
  commit(): Promise<void>;
  rollback(): Promise<void>;
}

describe("the submission guard's claim against what runs beside it", () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack(); // the API in this process; no worker (runs stay pending)
  }, LONG);
  afterAll(async () => stack?.stop());

  const submissionOf = offboardingStart;
  const startRun = (tx: EntityManager, tenant: string, reference: string) => stack.container.runtime.start_run(tx, PARTNER_OFFBOARDING, submissionOf(tenant, reference));
  /** A submission in a transaction of its own: its run, or the refusal it threw. */
  const submit = (tenant: string, reference: string): Promise<{ run: RunRow } | { refused: any }> =>
    tenantEm(stack.container.orm, tenant)
      .transactional((tx) => startRun(tx, tenant, reference))
      .then(({ run }) => ({ run }), (refused: unknown) => ({ refused }));
  const accepted = async (tenant: string, reference: string) => {
    const out = await submit(tenant, reference);
    if (!('run' in out)) throw out.refused;
    return out.run;
  };

  const openHolds: Array<Held<unknown>> = [];
  /** `body` in a tenant transaction held open until the test decides (a test that fails rolls it back). */
  function hold<T>(tenant: string, body: (tx: EntityManager) => Promise<T>): Held<T> {
    let decide!: (commit: boolean) => void;
    const decided = new Promise<boolean>((r) => (decide = r));
    let ready!: (v: T) => void;
    let failed!: (e: unknown) => void;
    const readyP = new Promise<T>((res, rej) => ((ready = res), (failed = rej)));
    let begun!: (pid: number) => void;
    const pidP = new Promise<number>((r) => (begun = r));
    const done = tenantEm(stack.container.orm, tenant)
      .transactional(async (tx) => {
        let v: T;
        try {
          begun((await tx.execute<Array<{ pid: number }>>('select pg_backend_pid() as pid'))[0]!.pid);
          v = await body(tx);
        } catch (e) {
          failed(e);
          throw e;
        }
        ready(v);
        if (!(await decided)) throw new RolledBack();
        return v;
      })
      .catch((e: unknown) => {
        if (!(e instanceof RolledBack)) throw e;
      });
    const h: Held<T> = {
      ready: within(readyP, 'the held transaction to reach its hold'),
      pid: within(pidP, 'the held transaction to begin'),
      commit: async () => {
        decide(true);
        await within(done, 'the held transaction to commit');
      },
      rollback: async () => {
        decide(false);
        await within(done.catch(() => undefined), 'the held transaction to roll back');
      },
    };
    done.catch(() => undefined); // awaited by commit or rollback (releaseAll), which see its failure
    openHolds.push(h as Held<unknown>);
    return h;
  }
  const releaseAll = async () => {
    for (const h of openHolds.splice(0)) await h.rollback().catch(() => undefined);
  };

  /**
   * Waits until a backend of this database waits for a lock the held transaction `holder` has (`what`
   * names the statement meant). By the lock graph, not by pg_stat_activity's query text: a submission's
   * statements go in messages of several (the coalescing client), and a backend waiting inside one may
   * show another statement of it there, so a poll on the text could miss it until the deadline.
   */
  const blockedOn = async (holder: Held<unknown>, what: string) =>
    blockedBy(stack.db.admin, await holder.pid, `a statement (${what}) to wait on the held transaction's lock`, { intervalMs: 20 });
  const claimOf = async (tenant: string, reference: string) =>
    (await stack.db.admin(`select run_id from partner_offboarding_claims where tenant_id = $1 and partner_reference = $2`, [tenant, reference])).rows.map((r) => r.run_id as string);
  const runsOf = async (tenant: string) => (await stack.db.admin(`select id from durable_runs where tenant_id = $1 order by id`, [tenant])).rows.map((r) => r.id as string).sort();
  const refusedNaming = (holder: string, run_status: string | null, offboarding_status: string | null = null) => ({
    refused: expect.objectContaining({ status: 409, code: 'partner_already_offboarded', extensions: { run_id: holder, run_status, offboarding_status } }),
  });

  /**
   * The held first submission commits or rolls back; the other one, waiting on it, is then refused
   * naming the first (which holds the claim), or accepted holding the claim itself.
   */
  async function settle(first: Held<unknown>, firstRun: RunRow, other: ReturnType<typeof submit>, outcome: 'commit' | 'rollback', tenant: string, reference: string) {
    await first[outcome]();
    const out = await within(other, 'the other submission');
    if (outcome === 'commit') {
      expect(out).toEqual(refusedNaming(firstRun.id, 'pending'));
      expect(await claimOf(tenant, reference)).toEqual([firstRun.id]);
    } else {
      expect(out).toMatchObject({ run: { status: 'pending' } });
      expect(await claimOf(tenant, reference)).toEqual([(out as { run: RunRow }).run.id]);
    }
  }

  it('two submissions of one partner at once: the second waits on the first\'s claim; refused naming it once it commits, accepted once it rolls back', { timeout: LONG }, async () => {
    const tenant = newTenant();
    try {
      for (const outcome of ['commit', 'rollback'] as const) {
        const reference = `P-ONCE-${outcome}`;
        const first = hold(tenant, (tx) => startRun(tx, tenant, reference));
        const { run: firstRun } = await first.ready;
        const second = submit(tenant, reference);
        await blockedOn(first, 'insert into partner_offboarding_claims');
        await settle(first, firstRun, second, outcome, tenant, reference);
      }
    } finally {
      await releaseAll();
    }
  });

  it("two submissions taking over a cancelled run's claim at once: the second waits; refused naming the first once it commits, takes the claim over once it rolls back", { timeout: LONG }, async () => {
    const tenant = newTenant();
    try {
      for (const outcome of ['commit', 'rollback'] as const) {
        const reference = `P-TAKEOVER-${outcome}`;
        const cancelled = await accepted(tenant, reference);
        await tenantEm(stack.container.orm, tenant).transactional((tx) => stack.container.runtime.complete(tx, cancelled.id, 'cancelled'));
        const first = hold(tenant, (tx) => startRun(tx, tenant, reference));
        const { run: firstRun } = await first.ready;
        const second = submit(tenant, reference);
        // Its record-and-claim statement meets the first's take-over of the row (or its read, then its own take-over does).
        await blockedOn(first, 'partner_offboarding_claims');
        await settle(first, firstRun, second, outcome, tenant, reference);
      }
    } finally {
      await releaseAll();
    }
  });

  it("a take-over that read the cancelled run's claim, then met another submission's take-over of it: refused naming that one once it commits (the update is guarded by the run it read), takes it over once it rolls back", { timeout: LONG }, async () => {
    const tenant = newTenant();
    try {
      for (const outcome of ['commit', 'rollback'] as const) {
        const reference = `P-GUARDED-${outcome}`;
        const cancelled = await accepted(tenant, reference);
        await tenantEm(stack.container.orm, tenant).transactional((tx) => stack.container.runtime.complete(tx, cancelled.id, 'cancelled'));
        // The late submission's guard stops before its take-over, having read the claim as the cancelled run's.
        let atTakeOver!: () => void;
        const reached = new Promise<void>((r) => (atTakeOver = r));
        let open!: () => void;
        const gate = new Promise<void>((r) => (open = r));
        const gated = (em: EntityManager): EntityManager =>
          new Proxy(em, {
            get(target, prop, receiver) {
              if (prop !== 'execute') return Reflect.get(target, prop, receiver);
              return async (sql: string, ...rest: unknown[]) => {
                if (/^update partner_offboarding_claims /.test(sql)) {
                  atTakeOver();
                  await gate;
                }
                return (target.execute as (...a: unknown[]) => Promise<unknown>).call(target, sql, ...rest);
              };
            },
          });
        const wf = stack.container.runtime.workflow(PARTNER_OFFBOARDING);
        const lateRuntime = new DurableRuntime({
          workflows: [{ ...wf, admitSubmission: (em, input, run) => refuseHeldPartner(gated(em), input, run) }],
          queues: stack.container.runtime.queues,
          logger: pino({ level: 'silent' }),
        });
        const late = tenantEm(stack.container.orm, tenant)
          .transactional((tx) => lateRuntime.start_run(tx, PARTNER_OFFBOARDING, submissionOf(tenant, reference)))
          .then(({ run }) => ({ run }), (refused: unknown) => ({ refused }));
        try {
          await within(reached, 'the late submission to reach its take-over');
          const first = hold(tenant, (tx) => startRun(tx, tenant, reference));
          const { run: firstRun } = await first.ready;
          expect(await claimOf(tenant, reference)).toEqual([cancelled.id]); // the first's take-over is not committed
          open();
          await blockedOn(first, 'update partner_offboarding_claims');
          await settle(first, firstRun, late, outcome, tenant, reference);
        } finally {
          open();
          await late;
        }
      }
    } finally {
      await releaseAll();
    }
  });

  it('a submission while the holder\'s cancel is in flight: refused naming the holder as it still is (no wait); accepted once the cancel commits; a cancel rolled back leaves it held', { timeout: LONG }, async () => {
    const tenant = newTenant();
    try {
      const holder = await accepted(tenant, 'P-CANCEL');
      const cancel = hold(tenant, (tx) => stack.container.runtime.complete(tx, holder.id, 'cancelled'));
      await cancel.ready;
      expect(await within(submit(tenant, 'P-CANCEL'), 'a submission beside the cancel')).toEqual(refusedNaming(holder.id, 'pending'));
      await cancel.rollback();
      expect(await submit(tenant, 'P-CANCEL')).toEqual(refusedNaming(holder.id, 'pending'));
      const cancelAgain = hold(tenant, (tx) => stack.container.runtime.complete(tx, holder.id, 'cancelled'));
      await cancelAgain.ready;
      await cancelAgain.commit();
      const next = await accepted(tenant, 'P-CANCEL');
      expect(await claimOf(tenant, 'P-CANCEL')).toEqual([next.id]);
      expect(await runsOf(tenant)).toEqual([holder.id, next.id].sort());
    } finally {
      await releaseAll();
    }
  });

  it('a submission while a failed holder is being retried: refused either way, the holder named as failed, then as pending once the retry commits', { timeout: LONG }, async () => {
    const tenant = newTenant();
    try {
      const holder = await accepted(tenant, 'P-RETRY');
      await stack.db.admin(`update durable_runs set status = 'failed', completed_at = now(), error = '{"code":"test_failed","message":"x"}'::jsonb where id = $1`, [holder.id]);
      const retry = hold(tenant, async (tx) => {
        const [row] = await tx.execute<RunRow[]>(`select * from durable_runs where tenant_id = ? and id = ? for update`, [tenant, holder.id]);
        return stack.container.runtime.retry(tx, row!, { retriedBy: 'submitter-1' });
      });
      expect((await retry.ready).status).toBe('pending');
      expect(await within(submit(tenant, 'P-RETRY'), 'a submission beside the retry')).toEqual(refusedNaming(holder.id, 'failed'));
      await retry.commit();
      expect(await submit(tenant, 'P-RETRY')).toEqual(refusedNaming(holder.id, 'pending'));
      expect(await claimOf(tenant, 'P-RETRY')).toEqual([holder.id]);
      expect(await runsOf(tenant)).toEqual([holder.id]);
    } finally {
      await releaseAll();
    }
  });

  it("a failed holder that may be retried, retried and run to the end between the guard's read of it and its read of the run's checkpoints: still holds the partner (refused), not taken over as a run whose steps all completed", { timeout: LONG }, async () => {
    const tenant = newTenant();
    const admin = new pg.Client({ connectionString: stack.db.adminUrl });
    await admin.connect();
    try {
      const holder = await accepted(tenant, 'P-RERUN');
      // Failed at settle-balances, freeze-partner completed: a retry would run it again (retryable).
      await stack.db.admin(`update durable_runs set status = 'failed', completed_at = now() where id = $1`, [holder.id]);
      const checkpoint = (seq: number, step: string, status: string, output: string | null) =>
        admin.query(
          `insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, output, attempt, created_at, updated_at) values ($1, $2, $3, $4, $5, $6, $7::jsonb, 1, now(), now())`,
          [randomUUID(), tenant, holder.id, seq, step, status, output],
        );
      await checkpoint(1, 'freeze-partner', 'completed', '{}');
      await checkpoint(2, 'settle-balances', 'failed', null);
      // The guard's read of the holder's checkpoints waits here (a plain read waits on no row lock: on the table's).
      await admin.query('begin');
      await admin.query('lock table durable_checkpoints in access exclusive mode');
      const pending = submit(tenant, 'P-RERUN');
      await blockedBy((sql, params) => admin.query(sql, params), (await admin.query('select pg_backend_pid() as pid')).rows[0].pid, "the guard's read of the failed holder's checkpoints", { intervalMs: 20 });
      // Meanwhile the holder is retried and completes (its record archived once a worker ran it).
      await admin.query(`update durable_runs set status = 'completed' where id = $1`, [holder.id]);
      await admin.query(`update durable_checkpoints set status = 'completed', output = '{}' where run_id = $1 and sequence_num = 2`, [holder.id]);
      await checkpoint(3, 'archive-record', 'completed', '{}');
      await admin.query('commit');
      // Before: every step completed read as "never retryable", so the claim was taken over (202).
      expect(await within(pending, 'the submission')).toEqual(refusedNaming(holder.id, 'failed'));
      expect(await claimOf(tenant, 'P-RERUN')).toEqual([holder.id]);
    } finally {
      await admin.query('rollback').catch(() => undefined);
      await admin.end();
    }
  });

  it('a submission while run retention deletes the failed holder: refused while the delete is in flight (no wait), the claim taken over once it commits', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const admin = new pg.Client({ connectionString: stack.db.adminUrl });
    await admin.connect();
    try {
      const holder = await accepted(tenant, 'P-RETAINED');
      await stack.db.admin(`update durable_runs set status = 'failed', completed_at = now() where id = $1`, [holder.id]);
      await admin.query('begin');
      expect((await admin.query(`delete from durable_runs where tenant_id = $1 and id = $2`, [tenant, holder.id])).rowCount).toBe(1);
      expect(await within(submit(tenant, 'P-RETAINED'), 'a submission beside the delete')).toEqual(refusedNaming(holder.id, 'failed'));
      await admin.query('commit');
      const next = await accepted(tenant, 'P-RETAINED');
      expect(await claimOf(tenant, 'P-RETAINED')).toEqual([next.id]);
    } finally {
      await admin.query('rollback').catch(() => undefined);
      await admin.end();
    }
  });

  it("a submission holding the partner's claim in its open transaction holds up nothing of the runs': a cancel of a run of the partner, and freeze-partner (its record claimed, a cancelled one's abandoned) of a run from before the claims", { timeout: LONG }, async () => {
    const tenant = newTenant();
    const reference = 'P-LOCKS';
    // Runs from before the claims (no guard): one to freeze, one to cancel.
    const { admitSubmission: _guard, ...unguarded } = stack.container.runtime.workflow(PARTNER_OFFBOARDING);
    const legacyRuntime = new DurableRuntime({ workflows: [unguarded], queues: stack.container.runtime.queues, logger: pino({ level: 'silent' }) });
    const legacy = async () => (await tenantEm(stack.container.orm, tenant).transactional((tx) => legacyRuntime.start_run(tx, PARTNER_OFFBOARDING, submissionOf(tenant, reference)))).run;
    try {
      // A cancelled offboarding whose record is frozen: its claim and its record are both given up.
      const cancelled = await accepted(tenant, reference);
      await stack.db.admin(
        `insert into partner_offboardings (id, tenant_id, run_id, partner_reference, partner_name, reason, status, frozen_at) values ($1, $2, $3, $4, 'Acme', 'inactive', 'frozen', now())`,
        [randomUUID(), tenant, cancelled.id, reference],
      );
      await tenantEm(stack.container.orm, tenant).transactional((tx) => stack.container.runtime.complete(tx, cancelled.id, 'cancelled'));
      const [toFreeze, toCancel] = [await legacy(), await legacy()];
      const first = hold(tenant, (tx) => startRun(tx, tenant, reference));
      const { run: firstRun } = await first.ready;
      const frozen = tenantEm(stack.container.orm, tenant).transactional((tx) =>
        freezePartnerStep.run({ submission: offboardingSubmission.parse(submissionOf(tenant, reference).input) }, { em: tx, run: { id: toFreeze.id, tenantId: tenant }, retired: () => false, now: new Date() } as unknown as StepContext),
      );
      expect(await within(frozen, 'freeze-partner beside the held submission')).toMatchObject({ offboarding_id: expect.any(String) });
      await within(
        tenantEm(stack.container.orm, tenant).transactional((tx) => stack.container.runtime.complete(tx, toCancel.id, 'cancelled')),
        'a cancel beside the held submission',
      );
      await first.commit();
      expect(await claimOf(tenant, reference)).toEqual([firstRun.id]);
      const records = (await stack.db.admin(`select run_id, status from partner_offboardings where tenant_id = $1 order by status`, [tenant])).rows;
      expect(records).toEqual([
        { run_id: cancelled.id, status: 'abandoned' },
        { run_id: toFreeze.id, status: 'frozen' },
      ]);
    } finally {
      await releaseAll();
    }
  });

  it("a claim cannot be erased by the application role (42501), even under its own tenant: the partner stays held by its run", { timeout: LONG }, async () => {
    const tenant = newTenant();
    const reference = `P-${randomUUID().slice(0, 8)}`;
    const holder = await accepted(tenant, reference);
    const em = tenantEm(stack.container.orm, tenant);
    expect(await sqlState(em.execute(`delete from partner_offboarding_claims where tenant_id = ? and partner_reference = ?`, [tenant, reference]))).toBe('42501');
    expect(await sqlState(em.execute(`delete from partner_offboarding_claims`))).toBe('42501');
    expect(await claimOf(tenant, reference)).toEqual([holder.id]);
    expect(await submit(tenant, reference)).toEqual(refusedNaming(holder.id, 'pending'));
  });

  it("another tenant's submission of the same reference never waits on this tenant's claim in flight, and is accepted", { timeout: LONG }, async () => {
    const [mine, theirs] = [newTenant(), newTenant()];
    try {
      const first = hold(mine, (tx) => startRun(tx, mine, 'P-SHARED'));
      const { run: myRun } = await first.ready;
      const out = await within(submit(theirs, 'P-SHARED'), "the other tenant's submission", 10_000);
      expect(out).toMatchObject({ run: { status: 'pending', tenant_id: theirs } });
      await first.commit();
      expect(await claimOf(mine, 'P-SHARED')).toEqual([myRun.id]);
      expect(await claimOf(theirs, 'P-SHARED')).toEqual([(out as { run: RunRow }).run.id]);
      // Under RLS each tenant sees its own claim only.
      const seen = await tenantEm(stack.container.orm, theirs).execute<{ run_id: string }[]>(`select run_id from partner_offboarding_claims`);
      expect(seen.map((r) => r.run_id)).toEqual([(out as { run: RunRow }).run.id]);
    } finally {
      await releaseAll();
    }
  });

  it("the accepted submission's own key is never refused by its run's claim: replayed (202) while the run holds the partner, and a retry of a key whose first attempt committed its run but not its answer finds that run (202); another key of the partner (spaces around its reference too, not another case: freeze-partner's key) is refused naming it", { timeout: LONG }, async () => {
    const tenant = newTenant();
    const token = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
    const RUN = '/api/v1/partner-offboarding/run';
    const body = { ...OFFBOARDING_SUBMISSION, partner: { reference: 'P-OWN-KEY', name: 'Acme' } };
    const post = (key: string) => api(stack, 'POST', RUN, { token, body, headers: { 'Idempotency-Key': key } });
    const key = randomUUID();
    const first = await post(key);
    expect(first.status, first.text).toBe(202);
    const replay = await post(key);
    expect(replay.status, replay.text).toBe(202);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(replay.json.run_id).toBe(first.json.run_id);
    // The claim's reference is the one freeze-partner keys its record by: trimmed by the input schema,
    // compared exactly. Spaces around it are the same partner; another case is another reference.
    const spelled = (reference: string) => api(stack, 'POST', RUN, { token, body: { ...body, partner: { reference, name: 'Acme' } }, headers: { 'Idempotency-Key': randomUUID() } });
    const spaced = await spelled('  P-OWN-KEY\t');
    expect(spaced.status, spaced.text).toBe(409);
    expect(spaced.json).toMatchObject({ run_id: first.json.run_id, offboarding_status: null });
    const otherCase = await spelled('p-own-key');
    expect(otherCase.status, otherCase.text).toBe(202);
    expect(await claimOf(tenant, 'p-own-key')).toEqual([otherCase.json.run_id]);
    // Refused by the claim (no record yet): the claim's holder read after the record-and-claim statement,
    // one message more than a refusal by a record (idempotency.test.ts; docs/performance.md).
    const { result: other, texts: refusedTexts } = await sent(() => post(randomUUID()));
    expect(other.status, other.text).toBe(409);
    expect(other.json).toMatchObject({ code: 'partner_already_offboarded', run_id: first.json.run_id, run_status: 'pending', offboarding_status: null });
    expect(refusedTexts.slice(1)).toEqual([
      expect.stringMatching(/^with ins as \(\s*insert into durable_runs/),
      expect.stringMatching(/^with rec as \(select o\.id/),
      expect.stringMatching(/^select c\.run_id/),
      'rollback',
      expect.stringMatching(/^begin;[\s\S]*response_status = 409[\s\S]*;\ncommit$/),
    ]);
    // A take-over of a cancelled run's claim: the holder's read and the take-over, two messages more than an accepted submission.
    expect((await api(stack, 'POST', `/api/v1/partner-offboarding/runs/${first.json.run_id}/cancel`, { token, headers: { 'Idempotency-Key': randomUUID() } })).status).toBe(200);
    const { result: takenOver, texts: takeOverTexts } = await sent(() => post(randomUUID()));
    expect(takenOver.status, takenOver.text).toBe(202);
    expect(takeOverTexts.slice(1)).toEqual([
      expect.stringMatching(/^with ins as \(\s*insert into durable_runs/),
      expect.stringMatching(/^with rec as \(select o\.id/),
      expect.stringMatching(/^select c\.run_id/),
      expect.stringMatching(/^update partner_offboarding_claims /),
      expect.stringMatching(/update idempotency_keys set status = 'completed'[\s\S]*;\ncommit$/),
    ]);

    // The crash window (idempotency.test.ts): a first attempt's run (and so its claim) committed, its key
    // left in progress with its lease run out. The retry of the key takes the key over and finds the run.
    const crashed = { ...body, partner: { reference: 'P-CRASHED', name: 'Acme' } };
    const crashKey = randomUUID();
    const recordId = randomUUID();
    await tenantEm(stack.container.orm, tenant).execute(
      `insert into idempotency_keys (id, tenant_id, principal, idempotency_key, method, route, fingerprint, status, locked_at, created_at, expires_at)
       values (?, ?, 'submitter-1', ?, 'POST', ?, ?, 'in_progress', now() - interval '10 minutes', now() - interval '10 minutes', now() + interval '1 day')`,
      [recordId, tenant, crashKey, `POST ${RUN}`, requestFingerprint('POST', RUN, { params: {}, body: offboardingSubmission.parse(crashed) })],
      'run',
    );
    const { run, created } = await tenantEm(stack.container.orm, tenant).transactional((tx) =>
      stack.container.runtime.start_run(tx, PARTNER_OFFBOARDING, { ...submissionOf(tenant, 'P-CRASHED'), idempotencyHash: submissionHash(tenant, recordId) }),
    );
    expect(created).toBe(true);
    expect(await claimOf(tenant, 'P-CRASHED')).toEqual([run.id]);
    const retried = await api(stack, 'POST', RUN, { token, body: crashed, headers: { 'Idempotency-Key': crashKey } });
    expect(retried.status, retried.text).toBe(202);
    expect(retried.json.run_id).toBe(run.id);
    expect(await runsOf(tenant)).toEqual([first.json.run_id, otherCase.json.run_id, takenOver.json.run_id, run.id].sort());
  });
});
