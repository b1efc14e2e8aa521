/**
 * Run retention (RUN_RETENTION, ADR 0011) against the real stack: PostgreSQL as the application role,
 * which reaches the system role only by SET LOCAL ROLE. Ended runs past the retention go, with their
 * checkpoints, for every tenant; a run just under it, every active or waiting run, and every domain and
 * evidence row stay; with retention off nothing goes; an evidence pack whose run was deleted still
 * verifies (its seal is not the run's); settled webhook deliveries past the retention go too, pending
 * ones never. Timestamps are moved into the past as the superuser: no sleeps.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Writable } from 'node:stream';
import pg from 'pg';
import { Queue, Worker, type Job } from 'bullmq';
import { Redis } from 'ioredis';
import { api, CLASS_A_SUBMISSION, newTenant, startStack, type TestStack, type WorkerHandle } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { startRunHost } from '../helpers/run-host.ts';
import { TenantRows, insertSql } from '../helpers/tenant-rows.ts';
import { sqlState } from '../helpers/sql-state.ts';
import { TEST_REDIS_URL } from '../helpers/env.ts';
import { isTenantOwned } from '../../src/platform/db/tenant-owned.ts';
import { ACTIVE_RUN_STATUSES, TERMINAL_RUN_STATUSES } from '../../src/platform/durable/durable-run.entity.ts';
import { deleteEndedRuns } from '../../src/platform/durable/retention.ts';
import { deleteSettledDeliveries } from '../../src/platform/webhooks/retention.ts';
import { systemEm, tenantEm } from '../../src/platform/db/tenant-em.ts';
import { IDEMPOTENCY_EXPIRY_JOB, MAINTENANCE_QUEUE, RUN_RETENTION_JOB, maintenanceHandlers, recordRetentionDecision, upsertMaintenanceSchedulers } from '../../src/platform/queue/maintenance.ts';
import { createMetrics } from '../../src/platform/telemetry/metrics.ts';
import { createLogger } from '../../src/platform/telemetry/logger.ts';
import { evidenceHash } from '../../src/modules/evidence/evidence.service.ts';
import { RECORDS_MATCH, sealedButUnrecorded } from '../helpers/evidence.ts';
import { GOLDEN_PATH } from '../../src/modules/golden-path/golden-path.workflow.ts';
import { StepExecutor } from '../../src/platform/durable/executor.ts';
import { stepJobId } from '../../src/platform/queue/job-ids.ts';
import type { StepJobData } from '../../src/platform/durable/runtime.ts';
import { jobHandlersFor } from '../../src/modules/index.ts';
import { TIMER_QUEUE } from '../../src/platform/queue/timers.ts';

const LONG = 120_000;
const DAY = 86_400_000;
const HOUR = 3_600_000;
const RETENTION = 30 * DAY;

/**
 * Resolves once `worker` has made its first sweep. The first sweep of a stack's first worker finds no
 * marker in Redis and takes it for a loss of Redis's data. It used to put the maintenance schedulers
 * back, the run-retention one with the worker's own RUN_RETENTION, so a schedule changed or removed
 * before then came back behind the test's back (a pass with 30d at once, deleting what a later test
 * seeded); it no longer does while they are there (restoreMaintenanceSchedulers, the last test here),
 * and the tests that change the schedule still wait for it, so that they show one thing each.
 */
const firstSweep = (worker: WorkerHandle) =>
  waitFor(() => worker.output().includes('Redis had lost its data (or this is its first sweep)') || undefined, { timeoutMs: 60_000, what: "the worker's first sweep" });

/**
 * Resolves once the run-retention scheduler is gone, after a worker started with RUN_RETENTION off
 * removed it. Not read once: a sweep of a worker still running that read the decision before that
 * worker's commit can put the scheduler back with the older decision after the removal, and takes it
 * away again when it reads the decision a second time (repairRunRetentionSchedule, ADR 0011: the copy
 * ends as the later decision's) — on a loaded machine, after the new worker's 'worker started' line.
 */
const retentionUnscheduled = (queue: Queue) =>
  waitFor(async () => (await queue.getJobScheduler(RUN_RETENTION_JOB)) === undefined || undefined, { timeoutMs: 30_000, what: 'the run-retention scheduler removed' });

describe('run retention', () => {
  let stack: TestStack;
  let admin: pg.Client;
  let rows: TenantRows;
  /** Tenant tables whose rows name a run (run_id), checkpoints aside: the domain and evidence records. */
  let domainTables: string[];
  const logLines: Array<Record<string, any>> = [];

  beforeAll(async () => {
    stack = await startStack();
    admin = new pg.Client({ connectionString: stack.db.adminUrl });
    await admin.connect();
    const metas = [...stack.container.orm.getMetadata().getAll().values()].filter((m) => !m.embeddable && !m.virtual && isTenantOwned(m));
    rows = await new TenantRows(admin).load(metas);
    domainTables = metas.filter((m) => 'runId' in m.properties && m.tableName !== 'durable_checkpoints').map((m) => m.tableName).sort();
  }, LONG);
  afterAll(async () => {
    await admin?.end();
    await stack?.stop();
  });

  /**
   * A run of `tenant` in `status` that last moved `endedAgoMs` ago (created a day before that), with two
   * checkpoints and (unless `domainRows` is false) one row of every domain table naming it; seeded as the superuser.
   */
  async function seedRun(tenant: string, status: string, endedAgoMs: number, workflow = GOLDEN_PATH, domainRows = true): Promise<string> {
    // Running while its rows are written, as a run's steps write them: the pack insert's trigger refuses a
    // pack for a run that is not pending or running (evidence-pack.entity.ts). Then given its status.
    const run: Record<string, unknown> = { ...(await rows.build('durable_runs', tenant)), status: 'running', workflow };
    await insert('durable_runs', run);
    for (const seq of [1, 2]) await insert('durable_checkpoints', { ...(await rows.build('durable_checkpoints', tenant)), run_id: run.id, sequence_num: seq });
    // The pack's seal is its insert's (the trigger's): seeding one more would be a second seal of the run.
    if (domainRows) for (const table of domainTables.filter((t) => t !== 'evidence_seals')) await insert(table, { ...(await rows.build(table, tenant)), run_id: run.id });
    const ended = (TERMINAL_RUN_STATUSES as readonly string[]).includes(status);
    await admin.query(
      `update durable_runs set status = $4, created_at = now() - ($2::float8 + ${DAY}) * interval '1 millisecond', updated_at = now() - $2::float8 * interval '1 millisecond',
              completed_at = case when $3 then now() - $2::float8 * interval '1 millisecond' end where id = $1`,
      [run.id, endedAgoMs, ended, status],
    );
    return run.id as string;
  }
  const insert = async (table: string, row: Record<string, unknown>) => {
    const { text, values } = insertSql(table, row);
    await admin.query(text, values);
  };
  /** What is left of each run, as the superuser: the run row, its checkpoints, its rows in each domain table. */
  async function leftOf(ids: string[]): Promise<Record<string, { run: number; checkpoints: number; domain: Record<string, number> }>> {
    const out: Record<string, { run: number; checkpoints: number; domain: Record<string, number> }> = {};
    const count = async (table: string, column: string, id: string) => Number((await admin.query(`select count(*) as n from ${table} where ${column} = $1`, [id])).rows[0].n);
    for (const id of ids) {
      const domain: Record<string, number> = {};
      for (const table of domainTables) domain[table] = await count(table, 'run_id', id);
      out[id] = { run: await count('durable_runs', 'id', id), checkpoints: await count('durable_checkpoints', 'run_id', id), domain };
    }
    return out;
  }
  const everyDomainRow = () => Object.fromEntries(domainTables.map((t) => [t, 1]));
  const gone = () => ({ run: 0, checkpoints: 0, domain: everyDomainRow() });
  const kept = () => ({ run: 1, checkpoints: 2, domain: everyDomainRow() });
  /** The run-retention job's handler as a worker process runs it, with its own log and metrics. */
  function retentionJob(runRetentionMs: number, retentionBatch?: { batchSize: number; maxBatches: number }) {
    const metrics = createMetrics('worker');
    const destination = new Writable({
      write(chunk, _enc, cb) {
        for (const l of String(chunk).split('\n').filter(Boolean)) logLines.push(JSON.parse(l));
        cb();
      },
    });
    const logger = createLogger({ level: 'info', name: 'dealix-worker', destination });
    const handlers = maintenanceHandlers({
      orm: stack.container.orm,
      idempotency: stack.container.idempotency,
      logger,
      runRetentionMs,
      runsDeleted: metrics.runsDeleted,
      webhookDeliveriesDeleted: metrics.webhookDeliveriesDeleted,
      ...(retentionBatch ? { retentionBatch } : {}),
    });
    return {
      run: () => handlers[RUN_RETENTION_JOB](),
      deletedMetric: async () => (await metrics.runsDeleted.get()).values,
      deliveriesDeletedMetric: async () => (await metrics.webhookDeliveriesDeleted.get()).values,
    };
  }

  /**
   * The run-retention schedule on `queue` (what a worker with RUN_RETENTION upserts), its first pass a
   * day away: passes apply the schedule in force, and none of its own runs during the test.
   */
  const scheduleOn = (queue: Queue) =>
    queue.upsertJobScheduler(RUN_RETENTION_JOB, { every: DAY, startDate: Date.now() + DAY }, { name: RUN_RETENTION_JOB, data: { retention_ms: RETENTION } });

  /** The maintenance handlers with small pass limits, queuing follow-ups on `queue`. */
  const handlersQueuingOn = (queue: Queue, retentionBatch: { batchSize: number; maxBatches: number }) =>
    maintenanceHandlers({
      orm: stack.container.orm,
      idempotency: stack.container.idempotency,
      logger: createLogger({ level: 'silent', name: 'dealix-worker' }),
      runRetentionMs: RETENTION,
      maintenanceQueue: () => queue,
      retentionBatch,
    });

  it('deletes the ended runs of every tenant past the retention with their checkpoints; keeps runs just under it, every active or waiting run, and every domain and evidence row', { timeout: LONG }, async () => {
    expect(domainTables).toEqual(expect.arrayContaining(['approval_requests', 'economics_models', 'evidence_packs', 'evidence_seals', 'partner_dossiers', 'partner_offboardings']));
    const [A, B] = [newTenant(), newTenant()];
    const old: string[] = [];
    const young: string[] = [];
    const active: string[] = [];
    for (const t of [A, B]) {
      for (const status of TERMINAL_RUN_STATUSES) old.push(await seedRun(t, status, RETENTION + DAY));
      old.push(await seedRun(t, 'completed', RETENTION + 60_000, 'partner-offboarding'));
      // Just under the retention: an hour to go.
      for (const status of TERMINAL_RUN_STATUSES) young.push(await seedRun(t, status, RETENTION - 3_600_000));
      // Active and waiting runs untouched for far longer than the retention are never deleted.
      for (const status of ACTIVE_RUN_STATUSES) active.push(await seedRun(t, status, 10 * RETENTION));
    }
    const job = retentionJob(RETENTION);

    const pass = await job.run();

    expect(pass).toMatchObject({ deleted: old.length, byWorkflow: { [GOLDEN_PATH]: old.length - 2, 'partner-offboarding': 2 }, complete: true });
    const left = await leftOf([...old, ...young, ...active]);
    for (const id of old) expect(left[id], `old run ${id}`).toEqual(gone());
    for (const id of [...young, ...active]) expect(left[id], `run ${id}`).toEqual(kept());
    // Counted by workflow, and one line for the pass with its counts.
    expect(await job.deletedMetric()).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ labels: { workflow: GOLDEN_PATH }, value: old.length - 2 }),
        expect.objectContaining({ labels: { workflow: 'partner-offboarding' }, value: 2 }),
      ]),
    );
    const line = logLines.filter((l) => l.msg === 'run retention: ended runs deleted').at(-1);
    expect(line).toMatchObject({ deleted: old.length, by_workflow: { [GOLDEN_PATH]: old.length - 2, 'partner-offboarding': 2 }, complete: true, retention_ms: RETENTION });

    // A second pass finds nothing more, and says so.
    expect(await job.run()).toMatchObject({ deleted: 0, batches: 1, complete: true });
    expect(logLines.filter((l) => l.msg === 'run retention: ended runs deleted').at(-1)).toMatchObject({ deleted: 0 });
  });

  it('in batches: each a transaction of its own, stopping at the pass limit with the rest left for the next pass', { timeout: LONG }, async () => {
    const t = newTenant();
    const old: string[] = [];
    for (let i = 0; i < 5; i++) old.push(await seedRun(t, 'completed', RETENTION + DAY));
    const first = await deleteEndedRuns(systemEm(stack.container.orm), { olderThanMs: RETENTION, batchSize: 2, maxBatches: 2 });
    expect(first).toMatchObject({ deleted: 4, batches: 2, complete: false });
    const second = await deleteEndedRuns(systemEm(stack.container.orm), { olderThanMs: RETENTION, batchSize: 2, maxBatches: 2 });
    expect(second).toMatchObject({ deleted: 1, batches: 1, complete: true });
    const left = await leftOf(old);
    for (const id of old) expect(left[id]).toEqual(gone());
  });

  it('a pass that stops at its limit queues the next at once: a backlog larger than a pass drains without waiting for the schedule', { timeout: LONG }, async () => {
    const t = newTenant();
    const old: string[] = [];
    for (let i = 0; i < 7; i++) old.push(await seedRun(t, 'completed', RETENTION + DAY, GOLDEN_PATH, false));
    // A maintenance queue of its own (not the spawned workers'), served in-process by the handlers with a
    // pass of one batch of 2 runs: 7 runs take 4 passes, and only the first is queued here.
    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: null });
    const prefix = `${stack.prefix}-drain`;
    const queue = new Queue(MAINTENANCE_QUEUE, { connection, prefix });
    const handlers = handlersQueuingOn(queue, { batchSize: 2, maxBatches: 1 });
    const worker = new Worker(MAINTENANCE_QUEUE, (job) => handlers[job.name as typeof RUN_RETENTION_JOB](), { connection, prefix, concurrency: 2 });
    try {
      await scheduleOn(queue);
      await queue.add(RUN_RETENTION_JOB, {});
      await waitFor(async () => Object.values(await leftOf(old)).every((l) => l.run === 0) || undefined, { timeoutMs: 30_000, what: 'the backlog to be deleted' });
      const done = await waitFor(async () => {
        const jobs = await queue.getCompleted();
        return jobs.some((j) => j.returnvalue?.complete) ? jobs : undefined;
      }, { timeoutMs: 30_000, what: 'the last pass to complete' });
      // One pass after another, each queuing one follow-up: 2 + 2 + 2 + 1, the last complete.
      expect(done.map((j) => j.returnvalue).sort((a, b) => b.deleted - a.deleted)).toMatchObject([
        { deleted: 2, complete: false },
        { deleted: 2, complete: false },
        { deleted: 2, complete: false },
        { deleted: 1, complete: true },
      ]);
      // Only the schedule's own next pass, a day away.
      expect(await queue.getJobCounts('waiting', 'delayed', 'active')).toEqual({ waiting: 0, delayed: 1, active: 0 });
    } finally {
      await worker.close();
      await queue.obliterate({ force: true });
      await queue.close();
      connection.disconnect();
    }
  });

  it('passes that stop at their limit queue one follow-up between them, not one each', { timeout: LONG }, async () => {
    const t = newTenant();
    const old: string[] = [];
    for (let i = 0; i < 4; i++) old.push(await seedRun(t, 'completed', RETENTION + DAY, GOLDEN_PATH, false));
    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
    const queue = new Queue(MAINTENANCE_QUEUE, { connection, prefix: `${stack.prefix}-once` });
    const handlers = handlersQueuingOn(queue, { batchSize: 1, maxBatches: 1 });
    try {
      await scheduleOn(queue);
      // Three passes (the schedule's, a follow-up, another worker's), none served: each stops at its limit.
      for (let i = 0; i < 3; i++) expect(await handlers[RUN_RETENTION_JOB]()).toMatchObject({ deleted: 1, complete: false });
      expect(await queue.getJobCounts('waiting', 'delayed', 'active')).toEqual({ waiting: 1, delayed: 1, active: 0 });
      expect((await queue.getWaiting()).map((j) => j.name)).toEqual([RUN_RETENTION_JOB]);
    } finally {
      await queue.obliterate({ force: true });
      await queue.close();
      connection.disconnect();
      await admin.query(`delete from durable_runs where id = any($1)`, [old]);
    }
  });

  it('with RUN_RETENTION off deletes nothing, however old the runs', { timeout: LONG }, async () => {
    const t = newTenant();
    const ids = [];
    for (const status of TERMINAL_RUN_STATUSES) ids.push(await seedRun(t, status, 100 * RETENTION));
    expect(await retentionJob(0).run()).toMatchObject({ deleted: 0 });
    const left = await leftOf(ids);
    for (const id of ids) expect(left[id]).toEqual(kept());
    await expect(deleteEndedRuns(systemEm(stack.container.orm), { olderThanMs: 0 })).rejects.toThrow(RangeError);
    await admin.query(`delete from durable_runs where id = any($1)`, [ids]); // not the next tests' business
  });

  it('a retention under the 24-hour floor (a job or a schedule forged in Redis) is applied as the floor: a run ended an hour ago stays, one ended two days ago goes', { timeout: LONG }, async () => {
    const t = newTenant();
    const recent = await seedRun(t, 'completed', HOUR, GOLDEN_PATH, false);
    const old = await seedRun(t, 'completed', 2 * DAY, GOLDEN_PATH, false);
    expect(await retentionJob(1).run()).toMatchObject({ complete: true });
    expect(logLines.filter((l) => l.msg === 'run retention: ended runs deleted').at(-1)).toMatchObject({ retention_ms: DAY });
    const left = await leftOf([recent, old]);
    expect([left[recent]!.run, left[recent]!.checkpoints, left[old]!.run]).toEqual([1, 2, 0]);
    await admin.query(`delete from durable_runs where id = $1`, [recent]);
  });

  it('the database refuses the rest: the system role cannot delete an active run, nor checkpoints or domain rows, and the application role deletes no run at all, its own tenant\'s ended one included (its checkpoints would go with it)', { timeout: LONG }, async () => {
    const t = newTenant();
    const waiting = await seedRun(t, 'waiting', 10 * RETENTION);
    const running = await seedRun(t, 'running', 10 * RETENTION);
    const sys = () => systemEm(stack.container.orm);
    const del = (sql: string, params: unknown[] = []) => sys().transactional((tx) => tx.execute(sql, params, 'run'));
    expect(await del(`delete from durable_runs where id in (?, ?)`, [waiting, running])).toMatchObject({ affectedRows: 0 });
    for (const table of ['durable_checkpoints', ...domainTables]) {
      expect(await sqlState(del(`delete from "${table}" where run_id = ?`, [waiting])), table).toBe('42501');
    }
    // An ended run, deleted as the application role under its own tenant or another: refused (roles.ts,
    // NO_DELETE_TABLES), since the cascade would take its completed checkpoints (ADR 0001, "Checkpoints are history").
    const theirs = await seedRun(t, 'completed', 10 * RETENTION);
    for (const tenant of [t, newTenant()]) {
      expect(await sqlState(tenantEm(stack.container.orm, tenant).transactional((tx) => tx.execute(`delete from durable_runs where id = ?`, [theirs], 'run')))).toBe('42501');
    }
    const left = await leftOf([waiting, running, theirs]);
    for (const id of [waiting, running, theirs]) expect(left[id]).toEqual(kept());
    await admin.query(`delete from durable_runs where id = $1`, [theirs]);
  });

  /** A real golden-path run of class A (approved by policy at once) submitted by `token` and run to completion: its view. */
  async function completedClassARun(token: string): Promise<any> {
    const host = startRunHost(stack, stack.container.runtime.workflow(GOLDEN_PATH));
    try {
      const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token, body: CLASS_A_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
      expect(res.status, res.text).toBe(202);
      return await waitFor(
        async () => {
          const r = await api(stack, 'GET', `/api/v1/golden-path/runs/${res.json.run_id}`, { token });
          return r.json?.status === 'completed' ? r.json : undefined;
        },
        { timeoutMs: 60_000, intervalMs: 50, what: 'the run to complete' },
      );
    } finally {
      await host.stop();
    }
  }

  it("a decision on the approval request of a run retention deleted: 409 run_deleted (not 404: the request still reads), nothing recorded, the same answer replayed under its key", { timeout: LONG }, async () => {
    const tenant = newTenant();
    const token = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
    const approver = await stack.token({ tenantId: tenant, sub: 'approver-1', roles: ['approver'] });
    const run = await completedClassARun(token);
    const approvalId = run.steps[2].output.approval_request_id as string;
    await admin.query(`update durable_runs set updated_at = now() - interval '31 days' where id = $1`, [run.run_id]);
    expect(await retentionJob(RETENTION).run()).toMatchObject({ complete: true });
    expect((await leftOf([run.run_id]))[run.run_id]).toMatchObject({ run: 0, checkpoints: 0 });

    const before = await api(stack, 'GET', `/api/v1/approvals/${approvalId}`, { token });
    expect(before.status).toBe(200);
    expect(before.json).toMatchObject({ run_id: run.run_id, status: 'approved', decisions: [{ kind: 'system' }] });
    const key = randomUUID();
    const decide = () => api(stack, 'POST', `/api/v1/approvals/${approvalId}/decision`, { token: approver, body: { decision: 'reject' }, headers: { 'Idempotency-Key': key } });
    const res = await decide();
    expect(res.status, res.text).toBe(409);
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(res.json).toMatchObject({ status: 409, code: 'run_deleted', run_id: run.run_id, approval_status: 'approved' });
    expect(res.json.detail).toMatch(/removed by run retention/);
    const replay = await decide();
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(replay.status).toBe(409);
    const { request_id: _first, ...answer } = res.json;
    expect(replay.json).toEqual(answer); // a replayed problem carries no request_id (docs/api.md)
    expect((await api(stack, 'GET', `/api/v1/approvals/${approvalId}`, { token })).json).toEqual(before.json);
    // Another tenant still learns nothing of it: 404.
    const stranger = await stack.token({ tenantId: newTenant(), sub: 'approver-1', roles: ['approver'] });
    expect((await api(stack, 'POST', `/api/v1/approvals/${approvalId}/decision`, { token: stranger, body: { decision: 'approve' }, headers: { 'Idempotency-Key': randomUUID() } })).status).toBe(404);
  });

  it("run_deleted names the request's status as it reads: one still stored pending (a run cancelled before withdrawn existed) past its deadline reads expired, in GET and in the 409 alike", { timeout: LONG }, async () => {
    const tenant = newTenant();
    const token = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
    const approver = await stack.token({ tenantId: tenant, sub: 'approver-1', roles: ['approver'] });
    const run = await completedClassARun(token);
    const approvalId = run.steps[2].output.approval_request_id as string;
    // As a request left pending by a cancel of an earlier release (not migrated), its deadline long past.
    await admin.query(`update approval_requests set status = 'pending', decided_at = null, sla_deadline = now() - interval '20 days' where id = $1`, [approvalId]);
    await admin.query(`update durable_runs set updated_at = now() - interval '31 days' where id = $1`, [run.run_id]);
    expect(await retentionJob(RETENTION).run()).toMatchObject({ complete: true });
    const read = (await api(stack, 'GET', `/api/v1/approvals/${approvalId}`, { token })).json;
    expect(read).toMatchObject({ status: 'expired' });
    const res = await api(stack, 'POST', `/api/v1/approvals/${approvalId}/decision`, { token: approver, body: { decision: 'approve' }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(res.json).toMatchObject({ status: 409, code: 'run_deleted', run_id: run.run_id, approval_status: read.status });
  });

  it("a real run's evidence pack still reads and verifies after the run was deleted, and a forgery of it still shows", { timeout: LONG }, async () => {
    const tenant = newTenant();
    const token = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
    const run = await completedClassARun(token);
    const evidenceId = run.steps[3].output.evidence_pack_id as string;
    const sha256 = run.steps[3].output.sha256 as string;
    const domainBefore = (await leftOf([run.run_id]))[run.run_id]!.domain;
    expect(domainBefore.evidence_packs).toBe(1);
    expect(domainBefore.evidence_seals).toBe(1);
    await admin.query(`update durable_runs set updated_at = now() - interval '31 days' where id = $1`, [run.run_id]);

    expect(await retentionJob(RETENTION).run()).toMatchObject({ complete: true });

    expect((await leftOf([run.run_id]))[run.run_id]).toEqual({ run: 0, checkpoints: 0, domain: domainBefore });
    expect((await api(stack, 'GET', `/api/v1/golden-path/runs/${run.run_id}`, { token })).status).toBe(404);
    const pack = await api(stack, 'GET', `/api/v1/evidence/${evidenceId}`, { token });
    expect(pack.status).toBe(200);
    expect(pack.json).toMatchObject({ run_id: run.run_id, sha256 });
    // Compared with the records retention keeps (dossier, economics, approval request and decisions); the run row is gone.
    expect((await api(stack, 'GET', `/api/v1/evidence/${evidenceId}/verify`, { token })).json).toEqual({ valid: true, sha256, recomputed_sha256: sha256, recorded_sha256: sha256, records: { ...RECORDS_MATCH, run: 'absent' } });

    // The owner forges content and a matching hash: the seal, which outlived the run, still disagrees.
    const forged = { ...pack.json.content, outcome: 'rejected' };
    await stack.db.owner(
      `select set_config('app.tenant_id', '${tenant}', false);
       update evidence_packs set content = '${JSON.stringify(forged).replace(/'/g, "''")}'::jsonb, sha256 = '${evidenceHash(forged)}' where id = '${evidenceId}'`,
    );
    // ...and so does the approval request retention kept (approved, not rejected).
    expect((await api(stack, 'GET', `/api/v1/evidence/${evidenceId}/verify`, { token })).json).toMatchObject({ valid: false, recorded_sha256: sha256, records: { run: 'absent', approval: 'mismatch' } });
  });

  it('a pack written as the release before seals wrote it — an old worker during the roll, or after a rollback: the pack and its checkpoint, no seal — is sealed all the same, its seal found after its run was deleted', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const token = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
    // Running while its evidence step writes the pack (the trigger refuses one for an ended run), then completed.
    const runId = await seedRun(tenant, 'running', RETENTION + DAY, GOLDEN_PATH, false);
    // Its approval step completed (a step's checkpoint follows its predecessor's: stepOrderTriggers).
    await admin.query(
      `insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, output, attempt, created_at, updated_at, completed_at)
       values ($1, $2, $3, 3, 'approval-packet', 'completed', '{}', 1, now(), now(), now())`,
      [randomUUID(), tenant, runId],
    );
    // The previous release's evidence step, as the application role under the run's tenant: the pack
    // and the checkpoint recording its hash, in one transaction; it knows nothing of evidence_seals.
    const content = { schema: 'dealix.evidence-pack/v1', outcome: 'approved', run: { id: runId, tenant_id: tenant } };
    const sha256 = evidenceHash(content);
    const packId = randomUUID();
    await tenantEm(stack.container.orm, tenant).transactional(async (tx) => {
      await tx.execute(`insert into evidence_packs (id, tenant_id, run_id, content, sha256, created_at) values (?, ?, ?, ?::jsonb, ?, now())`, [packId, tenant, runId, JSON.stringify(content), sha256], 'run');
      await tx.execute(
        `insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, output, attempt, created_at, updated_at, completed_at)
         values (?, ?, ?, 4, 'evidence-pack', 'completed', ?::jsonb, 1, now(), now(), now())`,
        [randomUUID(), tenant, runId, JSON.stringify({ evidence_pack_id: packId, sha256, outcome: 'approved' })],
        'run',
      );
    });
    await admin.query(`update durable_runs set status = 'completed', completed_at = updated_at where id = $1`, [runId]);
    const verify = async () => (await api(stack, 'GET', `/api/v1/evidence/${packId}/verify`, { token })).json;
    // Its hash and seal agree (its content is made up for the test: no records of its run's steps agree with it).
    expect(await verify()).toEqual(sealedButUnrecorded(sha256));

    expect(await retentionJob(RETENTION).run()).toMatchObject({ complete: true });
    expect((await leftOf([runId]))[runId]).toMatchObject({ run: 0, checkpoints: 0, domain: { evidence_packs: 1, evidence_seals: 1 } });
    expect(await verify()).toEqual(sealedButUnrecorded(sha256, 'absent'));
  });

  /**
   * The first job of a golden-path run of `tenant` that was cancelled long ago and deleted by a
   * retention pass, as delivered again (no first-delivery shortcut: it reads its run), and an
   * executor whose log lines the test reads.
   */
  async function jobOfDeletedRun(tenant: string) {
    const { runtime, orm } = stack.container;
    const wf = runtime.workflow(GOLDEN_PATH);
    const hash = randomUUID().replaceAll('-', '') + randomUUID().replaceAll('-', '');
    const { run } = await runtime.start(tenantEm(orm, tenant), GOLDEN_PATH, { tenantId: tenant, principal: 'producer', idempotencyHash: hash, input: CLASS_A_SUBMISSION, correlationId: randomUUID() });
    const job = (await runtime.queues.get(wf.queue)!.getJob(stepJobId(wf.tag, hash, 1, wf.steps[0]!.name))) as Job<StepJobData>;
    await job.remove();
    await admin.query(`update durable_runs set status = 'cancelled', completed_at = now(), updated_at = now() - interval '31 days' where id = $1`, [run.id]);
    expect(await retentionJob(RETENTION).run()).toMatchObject({ complete: true });
    job.attemptsStarted = 2;
    const lines: Array<Record<string, any>> = [];
    const logger = createLogger({ level: 'info', name: 'dealix-worker', destination: new Writable({ write: (c, _e, cb) => (lines.push(...String(c).split('\n').filter(Boolean).map((l) => JSON.parse(l))), cb()) }) });
    const executor = new StepExecutor({ orm, runtime, logger, workerId: 'test', leaseMs: 2_000 });
    return { wf, run, job, lines, executor };
  }

  it("a job of a run that retention deleted (a failed job retried from Bull Board, a job left in a queue no worker served) fails as gone, not as a security event; one naming another tenant's run still is one", { timeout: LONG }, async () => {
    const [tenant, intruder] = [newTenant(), newTenant()];
    const { run, job, lines, executor } = await jobOfDeletedRun(tenant);

    const gone = await executor.process(job).then(() => undefined, (e: Error) => e);
    expect(gone?.name).toBe('UnrecoverableError');
    expect(gone?.message).toMatch(/does not exist/);
    expect(lines.filter((l) => l.security_event)).toEqual([]);
    expect(lines.find((l) => l.run_id === run.id && l.level === 40)?.msg).toMatch(/does not exist/);

    // Another tenant's run, still there: a security event as before.
    const other = await seedRun(tenant, 'completed', 0, GOLDEN_PATH, false);
    job.data = { ...job.data, run_id: other, tenant_id: intruder };
    const hidden = await executor.process(job).then(() => undefined, (e: Error) => e);
    expect(hidden?.message).toMatch(/not visible to the job's tenant/);
    expect(lines.filter((l) => l.security_event === 'run_not_visible').map((l) => l.run_id)).toEqual([other]);
  });

  it("a job of a run that retention deleted, of a workflow version this worker no longer registers, fails as gone instead of being put off for ever; one naming another tenant's run is a security event", { timeout: LONG }, async () => {
    // Retention deletes runs long after they ended, by when their version is usually no longer
    // registered: a job of such a run (a failed job retried from Bull Board) used to be put off every
    // 10 s for a worker that registers the version, which none ever would (ADR 0008).
    const [tenant, intruder] = [newTenant(), newTenant()];
    const { wf, job, lines, executor } = await jobOfDeletedRun(tenant);
    job.data = { ...job.data, workflow_version: wf.version + 1_000 };
    const deferred: number[] = [];
    const control = { defer: async (_ms: number, deferrals: number) => void deferred.push(deferrals) };

    const gone = await executor.process(job, control).then(() => undefined, (e: Error) => e);
    expect(deferred).toEqual([]);
    expect(gone?.name).toBe('UnrecoverableError');
    expect(gone?.message).toMatch(/does not exist/);
    expect(lines.filter((l) => l.security_event)).toEqual([]);

    // Another tenant's run, still there: a security event, never put off either.
    const other = await seedRun(tenant, 'completed', 0, GOLDEN_PATH, false);
    job.data = { ...job.data, run_id: other, tenant_id: intruder };
    const hidden = await executor.process(job, control).then(() => undefined, (e: Error) => e);
    expect(deferred).toEqual([]);
    expect(hidden?.name).toBe('UnrecoverableError');
    expect(hidden?.message).toMatch(/not visible to the job's tenant/);
    expect(lines.filter((l) => l.security_event === 'run_not_visible').map((l) => l.run_id)).toEqual([other]);
  });

  it("an SLA timer of a run that retention deleted (its removal lost when the run was cancelled; SLAs outlast RUN_RETENTION) fires as a no-op: nothing expired, nothing written, the timer ends", { timeout: LONG }, async () => {
    const tenant = newTenant();
    // A cancelled run whose request is still stored pending (cancelled before `withdrawn` existed), past its deadline.
    const runId = await seedRun(tenant, 'cancelled', 31 * DAY);
    await admin.query(`update approval_requests set status = 'pending', decided_at = null, sla_deadline = now() - interval '1 day' where run_id = $1`, [runId]);
    const before = (await admin.query(`select * from approval_requests where run_id = $1`, [runId])).rows;
    expect(await retentionJob(RETENTION).run()).toMatchObject({ complete: true });
    expect((await leftOf([runId]))[runId]).toEqual(gone());
    // Its timer, still in the timers queue, comes due: the handler a worker runs it with.
    const data = { tenant_id: tenant, run_id: runId, hash: 'f'.repeat(64), deadline: new Date(Date.now() - DAY).toISOString() };
    const timers = stack.container.queues.get(TIMER_QUEUE)!;
    const timer = await timers.add('approval-sla', data, { jobId: `gp-retention-${runId}`, delay: DAY });
    const handlers = jobHandlersFor({ orm: stack.container.orm, runtime: stack.container.runtime });
    expect(await handlers['approval-sla']!(timer)).toEqual({ outcome: 'not_pending' });
    expect((await admin.query(`select * from approval_requests where run_id = $1`, [runId])).rows).toEqual(before);
    expect((await leftOf([runId]))[runId]).toEqual(gone());
    await timer.remove();
  });

  it('a worker with RUN_RETENTION schedules the run-retention job on the maintenance queue and runs it; RUN_RETENTION off removes the schedule', { timeout: LONG }, async () => {
    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
    const queue = new Queue(MAINTENANCE_QUEUE, { connection, prefix: stack.prefix });
    let worker: WorkerHandle | undefined;
    try {
      const old = await seedRun(newTenant(), 'failed', RETENTION + DAY);
      const young = await seedRun(newTenant(), 'failed', RETENTION - 3_600_000);
      worker = await stack.spawnWorker({ RUN_RETENTION: '30d' });
      const scheduler = await waitFor(() => queue.getJobScheduler(RUN_RETENTION_JOB), { timeoutMs: 30_000, what: 'the run-retention job scheduler' });
      expect(scheduler).toMatchObject({ key: RUN_RETENTION_JOB, name: RUN_RETENTION_JOB });
      const done = await waitFor(async () => (await queue.getCompleted()).find((j) => j.name === RUN_RETENTION_JOB), { timeoutMs: 60_000, what: 'a run-retention job to complete' });
      expect(done.returnvalue).toMatchObject({ deleted: 1, complete: true });
      expect(await leftOf([old, young])).toEqual({ [old]: gone(), [young]: kept() });

      await firstSweep(worker);
      // What a worker started with RUN_RETENTION off does at start: its decision recorded, then the schedule removed.
      const off = await recordRetentionDecision(stack.container.orm, { retentionMs: 0, decidedBy: 'worker-off' });
      await upsertMaintenanceSchedulers(queue, { runRetentionMs: 0, decision: off });
      expect(await queue.getJobScheduler(RUN_RETENTION_JOB)).toBeUndefined();
    } finally {
      // Its passes are this test's: the webhook deliveries' tests below count what their own passes delete.
      worker?.kill();
      await worker?.exited;
      await queue.close();
      connection.disconnect();
    }
  });

  /**
   * Webhook deliveries (ADR 0013) go in the same pass: those of every tenant that settled (delivered or
   * failed) longer ago than the retention; recent ones, and pending ones however old, stay, and the
   * database refuses the system role a pending one.
   */
  describe('webhook deliveries', () => {
    /** A delivery of `tenant` in `status` whose row last moved `settledAgoMs` ago (created an hour before); seeded as the superuser. */
    async function seedDelivery(tenant: string, status: 'pending' | 'delivered' | 'failed', settledAgoMs: number): Promise<string> {
      const row = await rows.seed('webhook_deliveries', tenant);
      await admin.query(
        `update webhook_deliveries set status = $2, created_at = now() - ($3::float8 + 3600000) * interval '1 millisecond', updated_at = now() - $3::float8 * interval '1 millisecond',
                delivered_at = case when $2 = 'delivered' then now() - $3::float8 * interval '1 millisecond' end,
                next_attempt_at = case when $2 = 'pending' then now() - $3::float8 * interval '1 millisecond' end where id = $1`,
        [row.id, status, settledAgoMs],
      );
      return row.id as string;
    }
    const left = async (ids: string[]) => ((await admin.query(`select id from webhook_deliveries where id = any($1)`, [ids])).rows as Array<{ id: string }>).map((r) => r.id).sort();

    it('deletes the delivered and failed deliveries of every tenant settled longer ago than the retention; keeps those just under it and every pending one however old; counts them in the log line and the metric', { timeout: LONG }, async () => {
      const [A, B] = [newTenant(), newTenant()];
      const old: string[] = [];
      const kept: string[] = [];
      for (const t of [A, B]) {
        old.push(await seedDelivery(t, 'delivered', RETENTION + DAY), await seedDelivery(t, 'failed', RETENTION + 60_000));
        // Just under the retention (an hour to go), and pending far longer than it: never deleted.
        kept.push(await seedDelivery(t, 'delivered', RETENTION - 3_600_000), await seedDelivery(t, 'failed', RETENTION - 3_600_000));
        kept.push(await seedDelivery(t, 'pending', 10 * RETENTION));
      }
      const job = retentionJob(RETENTION);

      const pass = await job.run();

      expect(pass).toMatchObject({ webhookDeliveries: { deleted: 4, byStatus: { delivered: 2, failed: 2 } }, complete: true });
      expect(await left([...old, ...kept])).toEqual([...kept].sort());
      expect(await job.deliveriesDeletedMetric()).toEqual(
        expect.arrayContaining([expect.objectContaining({ labels: { status: 'delivered' }, value: 2 }), expect.objectContaining({ labels: { status: 'failed' }, value: 2 })]),
      );
      expect(logLines.filter((l) => l.msg === 'run retention: ended runs deleted').at(-1)).toMatchObject({
        webhook_deliveries_deleted: 4,
        webhook_deliveries_by_status: { delivered: 2, failed: 2 },
        complete: true,
        retention_ms: RETENTION,
      });

      // A second pass finds nothing more.
      expect(await job.run()).toMatchObject({ webhookDeliveries: { deleted: 0, batches: 1, complete: true }, complete: true });
      await admin.query(`delete from webhook_deliveries where id = any($1)`, [kept]); // not the next tests' business
    });

    it('in batches, each its own transaction, stopping at the pass limit: the pass is then incomplete (a follow-up is queued) and the next one finishes', { timeout: LONG }, async () => {
      const t = newTenant();
      const old: string[] = [];
      for (let i = 0; i < 5; i++) old.push(await seedDelivery(t, i % 2 ? 'failed' : 'delivered', RETENTION + DAY));
      const first = await deleteSettledDeliveries(systemEm(stack.container.orm), { olderThanMs: RETENTION, batchSize: 2, maxBatches: 2 });
      expect(first).toMatchObject({ deleted: 4, batches: 2, complete: false });
      expect(await retentionJob(RETENTION, { batchSize: 2, maxBatches: 2 }).run()).toMatchObject({ webhookDeliveries: { deleted: 1, complete: true }, complete: true });
      expect(await left(old)).toEqual([]);

      // Runs finished, deliveries not: the pass as a whole is incomplete, so its follow-up is queued.
      for (let i = 0; i < 3; i++) old.push(await seedDelivery(t, 'delivered', RETENTION + DAY));
      expect(await retentionJob(RETENTION, { batchSize: 1, maxBatches: 2 }).run()).toMatchObject({ webhookDeliveries: { deleted: 2, complete: false }, complete: false });
      expect(await retentionJob(RETENTION, { batchSize: 1, maxBatches: 2 }).run()).toMatchObject({ webhookDeliveries: { deleted: 1, complete: true }, complete: true });
      expect(await left(old)).toEqual([]);
    });

    it('with RUN_RETENTION off deletes no delivery, however old', { timeout: LONG }, async () => {
      const t = newTenant();
      const ids = [await seedDelivery(t, 'delivered', 100 * RETENTION), await seedDelivery(t, 'failed', 100 * RETENTION)];
      expect(await retentionJob(0).run()).toMatchObject({ webhookDeliveries: { deleted: 0 } });
      expect(await left(ids)).toEqual([...ids].sort());
      await expect(deleteSettledDeliveries(systemEm(stack.container.orm), { olderThanMs: 0 })).rejects.toThrow(RangeError);
      await admin.query(`delete from webhook_deliveries where id = any($1)`, [ids]);
    });

    it('the database refuses the rest: the system role deletes no pending delivery, reads no payload, and deletes no endpoint', { timeout: LONG }, async () => {
      const t = newTenant();
      const pending = await seedDelivery(t, 'pending', 10 * RETENTION);
      const settled = await seedDelivery(t, 'failed', 10 * RETENTION);
      const del = (sql: string, params: unknown[] = []) => systemEm(stack.container.orm).transactional((tx) => tx.execute(sql, params, 'run'));
      // Pending: no row, whatever the statement says (policy webhook_deliveries_system_retention).
      expect(await del(`delete from webhook_deliveries where id = ?`, [pending])).toMatchObject({ affectedRows: 0 });
      expect(await del(`delete from webhook_deliveries where status = 'pending'`)).toMatchObject({ affectedRows: 0 });
      expect(await left([pending])).toEqual([pending]);
      // A settled one past the floor (a day: retention-floor-timestamps.test.ts): the policy admits it (how much older is the job's condition).
      expect(await del(`delete from webhook_deliveries where id = ?`, [settled])).toMatchObject({ affectedRows: 1 });
      for (const column of ['payload', 'attempt_log', 'last_error', 'endpoint_id']) {
        expect(await sqlState(del(`delete from webhook_deliveries where id = ? returning ${column}`, [pending])), column).toBe('42501');
      }
      expect(await sqlState(del(`delete from webhook_endpoints`)), 'webhook_endpoints').toBe('42501');
      expect(await sqlState(del(`update webhook_deliveries set status = 'failed' where id = ?`, [pending]))).toBe('42501');
      await admin.query(`delete from webhook_deliveries where id = $1`, [pending]);
    });
  });

});

/**
 * Workers started with different RUN_RETENTION values (a rolling deploy changing it, a misconfigured
 * worker): each upserts the run-retention scheduler at start. The scheduler carries the retention it
 * was scheduled with, the worker started last decides (ADR 0011) and says so when it changes what was
 * scheduled, and every pass deletes with the scheduled value, whichever worker runs it.
 */
describe('run retention across workers with different RUN_RETENTION', () => {
  let stack: TestStack;
  let admin: pg.Client;
  beforeAll(async () => {
    stack = await startStack();
    admin = new pg.Client({ connectionString: stack.db.adminUrl });
    await admin.connect();
  }, LONG);
  afterAll(async () => {
    await admin?.end();
    await stack?.stop();
  });

  const linesOf = (output: string) => output.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, any>);
  const differs = (output: string) => linesOf(output).filter((l) => typeof l.msg === 'string' && l.msg.startsWith('RUN_RETENTION differs'));
  /** A completed run of a new tenant that ended 45 days ago (seeded as the superuser): its id. */
  const runEnded45DaysAgo = async () =>
    ((await admin.query(
      `insert into durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, correlation_id, sequence_num, step_count, created_at, updated_at, completed_at)
       values (gen_random_uuid(), $1, 'golden-path', 1, md5(random()::text), 'completed', 'u', '{}', 'c', 4, 4, now() - interval '46 days', now() - interval '45 days', now() - interval '45 days') returning id`,
      [newTenant()],
    )).rows[0] as { id: string }).id;
  const stillThere = async (id: string) => (await admin.query(`select count(*)::int as n from durable_runs where id = $1`, [id])).rows[0].n as number;

  it('the scheduler carries its retention; a worker started with another one warns naming both and replaces it; a pass run by any worker deletes with the scheduled one', { timeout: LONG }, async () => {
    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
    const queue = new Queue(MAINTENANCE_QUEUE, { connection, prefix: stack.prefix });
    try {
      const first = await stack.spawnWorker({ RUN_RETENTION: '30d' });
      expect((await queue.getJobScheduler(RUN_RETENTION_JOB))?.template?.data).toMatchObject({ retention_ms: 30 * DAY });
      expect(differs(first.output())).toEqual([]);
      // Its first sweep puts its 30d back: done before the workers started after it replace the schedule.
      await firstSweep(first);

      const second = await stack.spawnWorker({ RUN_RETENTION: '60d' });
      const [warning] = differs(second.output());
      expect(warning).toMatchObject({ level: 40, run_retention_ms: 60 * DAY, scheduled_run_retention_ms: 30 * DAY });
      expect(warning!.msg).toContain('60d');
      expect(warning!.msg).toContain('30d');
      const scheduler = await queue.getJobScheduler(RUN_RETENTION_JOB);
      expect(scheduler?.template?.data).toMatchObject({ retention_ms: 60 * DAY });

      // A run that ended 45 days ago: past the first worker's 30d, within the scheduled 60d. The pass is
      // run by a worker whose own RUN_RETENTION is 30d, on the scheduled job's data: the run stays.
      const run = { id: await runEnded45DaysAgo() };
      const logger = createLogger({ level: 'silent', name: 'dealix-worker' });
      const handlers = maintenanceHandlers({ orm: stack.container.orm, idempotency: stack.container.idempotency, logger, runRetentionMs: 30 * DAY });
      const pass = await handlers[RUN_RETENTION_JOB]({ data: scheduler!.template!.data } as Job);
      expect(pass).toMatchObject({ deleted: 0, complete: true });
      expect(await stillThere(run.id)).toBe(1);
      // A worker whose own RUN_RETENTION is off deletes nothing, whatever the job carries; one with it set
      // handed a 30d job, with no maintenance queue to read the schedule from, deletes with the job's 30d.
      const off = maintenanceHandlers({ orm: stack.container.orm, idempotency: stack.container.idempotency, logger, runRetentionMs: 0 });
      expect(await off[RUN_RETENTION_JOB]({ data: { retention_ms: 30 * DAY } } as Job)).toMatchObject({ deleted: 0 });
      const ninety = maintenanceHandlers({ orm: stack.container.orm, idempotency: stack.container.idempotency, logger, runRetentionMs: 90 * DAY });
      expect(await ninety[RUN_RETENTION_JOB]({ data: { retention_ms: 30 * DAY } } as Job)).toMatchObject({ deleted: 1 });
      expect(await stillThere(run.id)).toBe(0);

      // A worker with retention off: it says so too, and the schedule goes.
      const third = await stack.spawnWorker({ RUN_RETENTION: '0' });
      expect(differs(third.output())).toMatchObject([{ level: 40, run_retention_ms: 0, scheduled_run_retention_ms: 60 * DAY }]);
      await retentionUnscheduled(queue);
    } finally {
      await queue.close();
      connection.disconnect();
    }
  });

  /**
   * A follow-up pass (queued by a pass that stopped at its limit) carries the retention of the schedule
   * it was queued under, and a backlog drains follow-up after follow-up, each queuing the next with the
   * value it carries: before, such a chain went on deleting with a replaced value (a retention
   * lengthened from 30d to 90d kept deleting the runs 30 to 90 days old, the ones the change was made
   * to keep), and went on after the schedule was removed (retention turned off).
   */
  it('a follow-up queued under 30d, run after the schedule became 90d, keeps a run ended 45 days ago; after the schedule was removed it deletes nothing', { timeout: LONG }, async () => {
    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
    const queue = new Queue(MAINTENANCE_QUEUE, { connection, prefix: `${stack.prefix}-in-force` });
    const run = await runEnded45DaysAgo();
    const left = () => stillThere(run);
    // A worker still configured with 30d (not restarted yet in the roll) takes the follow-up.
    const handlers = maintenanceHandlers({
      orm: stack.container.orm,
      idempotency: stack.container.idempotency,
      logger: createLogger({ level: 'silent', name: 'dealix-worker' }),
      runRetentionMs: 30 * DAY,
      maintenanceQueue: () => queue,
    });
    const followUp = { data: { retention_ms: 30 * DAY } } as Job;
    try {
      await upsertMaintenanceSchedulers(queue, { runRetentionMs: 90 * DAY, everyMs: DAY });
      expect(await handlers[RUN_RETENTION_JOB](followUp)).toMatchObject({ deleted: 0, complete: true });
      expect(await left()).toBe(1);

      await upsertMaintenanceSchedulers(queue, { runRetentionMs: 0 });
      expect(await queue.getJobScheduler(RUN_RETENTION_JOB)).toBeUndefined();
      expect(await handlers[RUN_RETENTION_JOB](followUp)).toMatchObject({ deleted: 0, complete: true });
      expect(await left()).toBe(1);
    } finally {
      await queue.obliterate({ force: true });
      await queue.close();
      connection.disconnect();
      await admin.query(`delete from durable_runs where id = $1`, [run]);
    }
  });
});

/**
 * A sweep that finds its marker gone (Redis flushed or replaced, or the first sweep on a fresh Redis)
 * puts the maintenance schedulers back only when Redis lost them: on a fresh Redis they are there,
 * upserted by every worker at its start, and a run-retention schedule removed (or replaced) by a worker
 * started since is the last-started worker's decision (ADR 0011), not to be undone by an older worker's
 * first sweep. Before, that sweep upserted its own RUN_RETENTION again, and its pass deleted at once.
 */
describe("the sweeper's repair after a Redis loss and the run-retention schedule", () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack();
  }, LONG);
  afterAll(async () => {
    await stack?.stop();
  });

  it('a sweep that finds its marker gone but the schedulers there leaves a schedule removed by a worker started since as it is', { timeout: LONG }, async () => {
    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
    const queue = new Queue(MAINTENANCE_QUEUE, { connection, prefix: stack.prefix });
    const marker = `${stack.prefix}:sweeper-lock:marker`;
    const repairs = (w: WorkerHandle) => w.output().split('Redis had lost its data (or this is its first sweep)').length - 1;
    try {
      const first = await stack.spawnWorker({ RUN_RETENTION: '30d' });
      await firstSweep(first);
      // A worker started since with retention off removes the schedule; it stops (its sweeps are not this test's).
      const off = await stack.spawnWorker({ RUN_RETENTION: '0' });
      off.kill();
      await off.exited;
      await retentionUnscheduled(queue);

      // What the first worker's first sweep finds on a fresh Redis when it ends after the later worker's start.
      await stack.redis.del(marker);
      await waitFor(() => repairs(first) >= 2 || undefined, { timeoutMs: 30_000, what: "the first worker's sweep after the marker went" });
      expect(await queue.getJobScheduler(RUN_RETENTION_JOB)).toBeUndefined();
      expect(await queue.getJobScheduler(IDEMPOTENCY_EXPIRY_JOB)).toMatchObject({ key: IDEMPOTENCY_EXPIRY_JOB });

      // Redis lost the schedulers too (every key of the maintenance queue): the sweep puts the standing ones
      // back, and the run-retention one as the worker started last decided it: off, none. (Before, with the
      // first worker's own 30d, since nothing outside Redis held the decision.)
      const keys = await stack.redis.keys(`${stack.prefix}:${MAINTENANCE_QUEUE}:*`);
      if (keys.length) await stack.redis.del(...keys, marker);
      expect(await queue.getJobSchedulers()).toEqual([]);
      await waitFor(() => repairs(first) >= 3 || undefined, { timeoutMs: 30_000, what: "the first worker's sweep after the loss" });
      expect(await queue.getJobScheduler(IDEMPOTENCY_EXPIRY_JOB)).toMatchObject({ key: IDEMPOTENCY_EXPIRY_JOB });
      expect(await queue.getJobScheduler(RUN_RETENTION_JOB)).toBeUndefined();

      // A worker started since with 45d (it stops too), then its scheduler lost alone, the marker kept: the
      // first worker's next sweep puts it back with 45d, not its own 30d. (Before, it came back only at the
      // next worker start.)
      const later = await stack.spawnWorker({ RUN_RETENTION: '45d' });
      later.kill();
      await later.exited;
      const scheduled = (await queue.getJobScheduler(RUN_RETENTION_JOB))?.template?.data as Record<string, unknown> | undefined;
      expect(scheduled).toMatchObject({ retention_ms: 45 * DAY });
      await queue.removeJobScheduler(RUN_RETENTION_JOB);
      const back = await waitFor(() => queue.getJobScheduler(RUN_RETENTION_JOB), { timeoutMs: 30_000, what: 'the run-retention scheduler put back by a sweep' });
      expect(back.template?.data).toEqual(scheduled);
      expect(repairs(first)).toBe(3);
    } finally {
      await queue.close();
      connection.disconnect();
    }
  });
});
