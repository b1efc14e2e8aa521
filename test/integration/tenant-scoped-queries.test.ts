import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { api, CLASS_A_SUBMISSION, CLASS_C_SUBMISSION, newTenant, OFFBOARDING_SUBMISSION, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { inlineStatement } from '../../src/platform/db/statement-batch.ts';
import { CoalescingClient, DEFER_UNTIL_NEXT, LAST_IN_TRANSACTION, type Prelude } from '../../src/platform/db/coalescing-client.ts';
import { createContainer, type Container } from '../../src/container.ts';
import { createTestDatabase } from '../helpers/db.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { startWorkerProcess, type WorkerProcess } from '../../src/worker-runtime.ts';
import { stackSweeper } from '../helpers/recovery.ts';

/**
 * Every statement the platform sends for the golden path (and a few partner offboardings: its submission
 * guard) (API and worker, both in this process so
 * their statements can be recorded) names its tenant in predicates an index can use: planned without
 * the RLS policies (as the superuser, sequential scans disabled), no tenant-owned table is read by a
 * sequential scan or a whole-index scan. RLS adds `tenant_id = <the tenant>` to every query the
 * application role runs, which used to hide queries that filtered by run id alone: run as the owner,
 * the system role or with RLS off they read the whole table, and their cost grew with every tenant's
 * data (a run's first step read all checkpoints of the database: 8 ms at 90,000 rows).
 */
let stack: TestStack;
let workerContainer: Container;
let worker: WorkerProcess;
const tenant = newTenant();
const statements = new Set<string>();
/** The same statements as sent, `$n` placeholders and their values, by text. */
const bound = new Map<string, unknown[]>();
const originalQuery = CoalescingClient.prototype.query;
/** A prelude's statements go out with the next transaction's first message, never through query(): recorded here. */
type PreludeSender = { sendWithPrelude(prelude: Prelude, statement: unknown): Promise<unknown> };
const originalSendWithPrelude = (CoalescingClient.prototype as unknown as PreludeSender).sendWithPrelude;
const tok: Record<string, string> = {};

const submit = (body: unknown, key: string = randomUUID()) =>
  api(stack, 'POST', '/api/v1/golden-path/run', { token: tok.submitter!, body, headers: { 'Idempotency-Key': key } });
const get = (path: string, token = tok.submitter!) => api(stack, 'GET', path, { token });
const decide = (approvalId: string, token: string) =>
  api(stack, 'POST', `/api/v1/approvals/${approvalId}/decision`, { token, body: { decision: 'approve' }, headers: { 'Idempotency-Key': randomUUID() } });
const waitStatus = (id: string, statuses: string[]) =>
  waitFor(
    async () => {
      const r = (await get(`/api/v1/golden-path/runs/${id}`)).json;
      return statuses.includes(r?.status) ? r : undefined;
    },
    { timeoutMs: 60_000, intervalMs: 100, what: `run ${id} to reach ${statuses.join('|')}` },
  );

beforeAll(async () => {
  // Recorded before the coalescing client merges them: one statement per call, as MikroORM issues it.
  CoalescingClient.prototype.query = function (this: CoalescingClient, config: any, values?: any, callback?: any) {
    // Bound statements are recorded with their values written in, so they can be planned below as they ran.
    if (typeof config === 'string') statements.add(Array.isArray(values) && values.length > 0 ? inlineStatement({ text: config, values }) : config);
    if (typeof config === 'string' && Array.isArray(values) && values.length > 0) bound.set(config, values);
    return originalQuery.call(this, config, values, callback);
  };
  (CoalescingClient.prototype as unknown as PreludeSender).sendWithPrelude = function (this: CoalescingClient, prelude: Prelude, statement: unknown) {
    for (const s of typeof prelude.sql === 'string' ? [{ text: prelude.sql }] : prelude.sql) {
      statements.add(inlineStatement(s));
      if (s.values?.length) bound.set(s.text, [...s.values]);
    }
    return originalSendWithPrelude.call(this, prelude, statement);
  };
  stack = await startStack({ env: { APPROVAL_SLA_B: '1s' } });
  // The plans below are of tables without statistics (this machine runs autovacuum off): with it on, an
  // autoanalyze at an unforced moment gave other plans (an analyzed, empty webhook_endpoints read whole under
  // enable_seqscan off). Pinned off for every table of this file's database.
  await stack.db.admin(`do $$ declare t text; begin for t in select relname from pg_class where relkind = 'r' and relnamespace = 'public'::regnamespace loop execute format('alter table %I set (autovacuum_enabled = false)', t); end loop; end $$`);
  workerContainer = await createContainer(stack.config, { service: 'worker' });
  worker = await startWorkerProcess(workerContainer);
  const t = (sub: string, roles: string[] = []) => stack.token({ tenantId: tenant, sub, roles });
  tok.submitter = await t('submitter-1');
  tok.approver1 = await t('approver-1', ['approver']);
  tok.approver2 = await t('approver-2', ['approver']);
  tok.admin = await t('admin-1', ['admin']);
});
afterAll(async () => {
  CoalescingClient.prototype.query = originalQuery;
  (CoalescingClient.prototype as unknown as PreludeSender).sendWithPrelude = originalSendWithPrelude;
  await worker?.stop();
  await workerContainer?.close();
  await stack?.stop();
});

/**
 * Scans of tenant-owned tables in a JSON plan that read the whole table or a whole index: a sequential
 * scan, or an index scan whose condition does not bound the index's first column (PostgreSQL shows a
 * condition on a later column as an index condition too, but walks the whole index for it).
 */
function fullScans(plan: any, firstColumn: Map<string, { table: string; column: string }>, tables: Set<string>, out: string[] = []): string[] {
  const rel = plan['Relation Name'] as string | undefined;
  if (rel && tables.has(rel) && plan['Node Type'] === 'Seq Scan') out.push(`Seq Scan on ${rel}`);
  const index = plan['Index Name'] ? firstColumn.get(plan['Index Name']) : undefined;
  if (index) {
    const cond = String(plan['Index Cond'] ?? '');
    if (!new RegExp(`\\(${index.column} (=|<|>|<=|>=) `).test(cond)) out.push(`whole-index scan of ${plan['Index Name']} on ${index.table} (${cond || 'no condition'})`);
  }
  for (const child of plan.Plans ?? []) fullScans(child, firstColumn, tables, out);
  return out;
}

const SKIP = /^(begin|commit|rollback|savepoint\s|release\s|set local role|select set_config\(|select 1$|select pg_advisory_xact_lock)/i;
/**
 * Cross-tenant by design, not a statement that forgot its tenant: every API process loads the whole
 * token revocation list, every tenant's (ADR 0018, as the system role), bounded by the revocations kept,
 * not by any tenant's data.
 */
const WHOLE_LIST = /^select tenant_id, jti, subject, .* from token_revocations where \(expires_at is null or expires_at > now\(\) - interval '5 minutes'\) and lifted_at is null$/is;

describe('queries name their tenant', () => {
  it('the golden path, approvals, SLA expiry, lists and replays read tenant-owned tables only through tenant-leading index conditions', async () => {
    // Class A to completion, with its evidence; an idempotent replay.
    const key = randomUUID();
    const a = await submit(CLASS_A_SUBMISSION, key);
    expect(a.status).toBe(202);
    expect((await submit(CLASS_A_SUBMISSION, key)).headers.get('idempotent-replayed')).toBe('true');
    const doneA = await waitStatus(a.json.run_id, ['completed', 'failed']);
    expect(doneA.status).toBe('completed');
    expect((await get(doneA.links.verify)).json.valid).toBe(true);
    // Class C: two approvers; the approval lists and views.
    const c = await submit(CLASS_C_SUBMISSION);
    const waitingC = await waitStatus(c.json.run_id, ['waiting', 'failed']);
    const approvalId = waitingC.steps[2].output.approval_request_id as string;
    expect((await get('/api/v1/approvals?status=pending', tok.approver1)).status).toBe(200);
    const approvals = await get('/api/v1/approvals?limit=1', tok.approver1);
    expect(approvals.status).toBe(200);
    expect((await get(`/api/v1/approvals?limit=1&cursor=${encodeURIComponent(approvals.json.next_cursor)}`, tok.approver1)).status).toBe(200);
    expect((await get(`/api/v1/approvals/${approvalId}`, tok.approver1)).status).toBe(200);
    expect((await decide(approvalId, tok.approver1!)).status).toBe(200);
    expect((await decide(approvalId, tok.approver2!)).status).toBe(200);
    expect((await waitStatus(c.json.run_id, ['completed', 'failed'])).status).toBe('completed');
    // Class B with a one-second SLA: expired by its timer.
    const b = await submit(SAMPLE_SUBMISSION);
    expect((await waitStatus(b.json.run_id, ['approval_expired', 'completed', 'failed'])).status).toBe('approval_expired');
    // Class C cancelled while it waits: its request withdrawn. The lists by the status a request reads.
    const cancelled = await submit(CLASS_C_SUBMISSION);
    expect((await waitStatus(cancelled.json.run_id, ['waiting', 'failed'])).status).toBe('waiting');
    // The sweeper's repair of a waiting run (after a Redis loss, or its timer gone): its SLA timer
    // re-created from the request, read by the run's key.
    const golden = workerContainer.workflows.find((w) => w.name === 'golden-path')!;
    await tenantEm(workerContainer.orm, tenant).transactional((tx) => golden.repairWaiting!(tx, { tenantId: tenant, runId: cancelled.json.run_id }));
    // The sweeper's re-enqueue of a run it found stale reads the run by key (a waiting one: nothing to
    // re-enqueue). Its private method, called directly: a run left stale on purpose would race the worker.
    const sweeper = worker.sweeper as unknown as { reenqueue(ref: { id: string; tenant_id: string; workflow: string; workflow_version: number }): Promise<boolean> };
    expect(await sweeper.reenqueue({ id: cancelled.json.run_id, tenant_id: tenant, workflow: 'golden-path', workflow_version: 1 })).toBe(false);
    expect((await api(stack, 'POST', `/api/v1/golden-path/runs/${cancelled.json.run_id}/cancel`, { token: tok.submitter!, headers: { 'Idempotency-Key': randomUUID() } })).status).toBe(200);
    const cursor = Buffer.from(`${new Date().toISOString()}|${randomUUID()}`).toString('base64url');
    for (const status of ['pending', 'expired', 'withdrawn']) {
      expect((await get(`/api/v1/approvals?status=${status}&limit=1`, tok.approver1)).status).toBe(200);
      expect((await get(`/api/v1/approvals?status=${status}&limit=1&cursor=${cursor}`, tok.approver1)).status).toBe(200);
    }
    // Run lists: filtered, and the next page by cursor.
    const page = await get('/api/v1/golden-path/runs?limit=1');
    expect(page.status).toBe(200);
    expect((await get(`/api/v1/golden-path/runs?limit=1&status=completed&cursor=${encodeURIComponent(page.json.next_cursor)}`)).status).toBe(200);
    // Bulk cancels that match nothing (every run of the tenant's has ended; an id of no run): their
    // batches and their look for runs left, by a list of statuses (planned below on a tenant with many
    // waiting runs older than its runs in flight: a bulk cancel of those must not walk them).
    const bulkCancel = (body: unknown) => api(stack, 'POST', '/api/v1/golden-path/runs/cancel', { token: tok.admin!, body, headers: { 'Idempotency-Key': randomUUID() } });
    expect((await bulkCancel({ status: ['pending', 'running'] })).json.cancelled).toBe(0);
    expect((await bulkCancel({ status: ['pending', 'running'], created_before: new Date().toISOString() })).json.cancelled).toBe(0);
    expect((await bulkCancel({ status: ['running', 'waiting', 'pending'] })).json.cancelled).toBe(0);
    expect((await bulkCancel({ status: ['waiting'], ids: [randomUUID()] })).json.cancelled).toBe(0);
    // A failed run retried, and a pending run whose job is gone re-enqueued by a sweep: statements
    // that name one run by its key and an ended or active status (copies of run A, seeded as such).
    const copyOfA = async (status: string) => {
      const id = randomUUID();
      await stack.db.admin(
        `insert into durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, correlation_id, sequence_num, step_count, error, created_at, updated_at, completed_at)
         select $1, tenant_id, workflow, workflow_version, md5(random()::text) || md5(random()::text), $3, principal, input, correlation_id, 0, step_count,
                case when $3 = 'failed' then '{"code":"seeded"}'::jsonb end, now(), now() - interval '1 hour', case when $3 = 'failed' then now() end
           from durable_runs where id = $2`,
        [id, a.json.run_id, status],
      );
      return id;
    };
    const failed = await copyOfA('failed');
    expect((await api(stack, 'POST', `/api/v1/golden-path/runs/${failed}/retry`, { token: tok.submitter!, headers: { 'Idempotency-Key': randomUUID() } })).status).toBe(200);
    expect((await waitStatus(failed, ['completed', 'failed'])).status).toBe('completed');
    // A sweep (this one, or the worker's own first) re-enqueues the pending one and looks for the
    // waiting one's approval to put its SLA timer back (it has none: it is then cancelled).
    const jobless = await copyOfA('pending');
    const timerless = await copyOfA('waiting');
    await stackSweeper(stack, 'tenant-scoped-queries-sweep').sweep();
    expect((await waitStatus(jobless, ['completed', 'failed'])).status).toBe('completed');
    // Ended by a bulk cancel of its id: the runs found are locked by their key.
    expect((await bulkCancel({ status: ['waiting'], ids: [timerless] })).json.cancelled_ids).toEqual([timerless]);
    // Partner offboarding's submission guard and steps: one offboarding accepted and run, a second of its
    // partner refused, and one taking over the claim of a run that is gone (deleted by run retention).
    const offboard = (reference: string) =>
      api(stack, 'POST', '/api/v1/partner-offboarding/run', { token: tok.submitter!, body: { ...OFFBOARDING_SUBMISSION, partner: { reference, name: 'Acme' } }, headers: { 'Idempotency-Key': randomUUID() } });
    const offboarded = await offboard('P-PLANNED');
    expect(offboarded.status, offboarded.text).toBe(202);
    expect((await offboard('P-PLANNED')).status).toBe(409);
    /** `reference` claimed by `run`, with its frozen record too: the new run's freeze-partner reads the partner's holder (locked) and abandons it. */
    const heldBy = async (reference: string, run: string) => {
      await stack.db.admin(`insert into partner_offboarding_claims (id, tenant_id, partner_reference, run_id, claimed_at) values ($1, $2, $3, $4, now())`, [randomUUID(), tenant, reference, run]);
      await stack.db.admin(
        `insert into partner_offboardings (id, tenant_id, run_id, partner_reference, partner_name, reason, status, frozen_at) values ($1, $2, $3, $4, 'Acme', 'inactive', 'frozen', now())`,
        [randomUUID(), tenant, run, reference],
      );
    };
    await heldBy('P-RETAINED', randomUUID());
    const takenOver = await offboard('P-RETAINED');
    expect(takenOver.status, takenOver.text).toBe(202);
    // And a failed holder: its checkpoints read (whether its retry would be refused), by the guard and by
    // freeze-partner. It failed at a step that had committed its effects (its output kept): not retryable, so the partner is taken over.
    const stuck = randomUUID();
    await stack.db.admin(
      `insert into durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, correlation_id, sequence_num, step_count, created_at, updated_at, completed_at)
       select $1::uuid, tenant_id, workflow, workflow_version, md5($1::text), 'failed', principal, input, correlation_id, 0, step_count, now(), now(), now() from durable_runs where id = $2`,
      [stuck, offboarded.json.run_id],
    );
    await stack.db.admin(
      `insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, output, attempt, created_at, updated_at) values ($1, $2, $3, 1, 'freeze-partner', 'failed', '{}', 1, now(), now())`,
      [randomUUID(), tenant, stuck],
    );
    await heldBy('P-STUCK', stuck);
    const afterStuck = await offboard('P-STUCK');
    expect(afterStuck.status, afterStuck.text).toBe(202);
    for (const id of [offboarded.json.run_id, takenOver.json.run_id, afterStuck.json.run_id]) {
      const ended = await waitFor(
        async () => {
          const r = (await get(`/api/v1/partner-offboarding/runs/${id}`)).json;
          return ['completed', 'failed'].includes(r?.status) ? r : undefined;
        },
        { timeoutMs: 60_000, intervalMs: 100, what: `offboarding ${id} to end` },
      );
      expect(ended.status).toBe('completed');
    }

    const admin = new pg.Client({ connectionString: stack.db.adminUrl });
    await admin.connect();
    try {
      const tables = new Set((await admin.query<{ relname: string }>(`select relname from pg_class where relrowsecurity and relkind = 'r'`)).rows.map((r) => r.relname));
      expect(tables.has('durable_checkpoints')).toBe(true);
      const indexes = await admin.query<{ index: string; table: string; column: string }>(
        `select i.relname as index, t.relname as table, a.attname as column
           from pg_index x join pg_class i on i.oid = x.indexrelid join pg_class t on t.oid = x.indrelid
           join pg_attribute a on a.attrelid = t.oid and a.attnum = x.indkey[0]
          where t.relrowsecurity and x.indpred is null`,
      );
      // Partial indexes are left out: one holds only the rows its predicate names (durable_runs'
      // active runs), so walking it is bounded by those, not by the table.
      const firstColumn = new Map(indexes.rows.map((r) => [r.index, { table: r.table, column: r.column }]));
      expect(firstColumn.get('durable_checkpoints_pkey')?.column).toBe('tenant_id');
      const parts = [...statements]
        .flatMap((s) => s.split(/;\s*\n/))
        .map((s) => s.replace(DEFER_UNTIL_NEXT, '').trim())
        .filter((s) => s && !SKIP.test(s) && !WHOLE_LIST.test(s));
      const found: string[] = [];
      let planned = 0;
      for (const sql of parts) {
        // The superuser bypasses RLS: the plan is what the statement's own predicates allow.
        await admin.query(`begin; set local enable_seqscan = off; select set_config('app.tenant_id', '${tenant}', true)`);
        try {
          const { rows } = await admin.query(`explain (format json) ${sql}`);
          planned++;
          for (const scan of fullScans(rows[0]['QUERY PLAN'][0].Plan, firstColumn, tables)) found.push(`${scan}:\n  ${sql.replace(/\s+/g, ' ').slice(0, 300)}`);
        } finally {
          await admin.query('rollback');
        }
      }
      // The recording saw the whole path: the run's state read, the approvals, the lists.
      expect(planned).toBeGreaterThan(15);
      expect(parts.some((s) => /from durable_checkpoints c where/.test(s))).toBe(true);
      // And partner offboarding's submission guard: the record read with the claim, the claim's holder, its take-over.
      // And freeze-partner's holder of the partner (locked) and its abandon, for a record whose run holds nothing.
      for (const guard of [/^with rec as \(select o\.id/, /^select c\.run_id/, /^update partner_offboarding_claims /, /^select o\.id[\s\S]*for update of o$/, /^update partner_offboardings set status = 'abandoned' where tenant_id = \S+ and run_id = /, /^select r\.status, r\.step_count, /]) expect(parts.some((s) => guard.test(s)), String(guard)).toBe(true);
      // And what travels as a prelude (its own short transaction ahead of the next one's first message,
      // never a query() call): the resumed run's holder (ADR 0016), the idempotency claim (ADR 0004).
      expect(parts.some((s) => /^update durable_runs set lease_owner = /.test(s))).toBe(true);
      expect(parts.some((s) => /insert into idempotency_keys/.test(s))).toBe(true);
      expect(found).toEqual([]);
      // Lists read a page in index order, not every row of the tenant sorted: the approvals list
      // without a status filter (newest first) included, each status's page merged in order.
      // (A runs list reads each status's page of keys in index order, merged: from (… durable_runs where tenant_id = … and status = … order by created_at desc …).)
      const lists = parts.filter(
        (sql) =>
          /^select [\s\S]* from approval_requests where tenant_id = '[^']+' and status = '[a-z]+'[\s\S]*? order by created_at desc/.test(sql) ||
          /^select [\s\S]* from \(select k_at, k_id from \(\(select created_at as k_at, id as k_id from durable_runs where tenant_id = '[^']+' and workflow = '[^']+' and status = '[^']+'[\s\S]*? order by created_at desc/.test(sql),
      );
      expect(lists.filter((sql) => /from durable_runs/.test(sql)).length).toBeGreaterThanOrEqual(2);
      expect(lists.filter((sql) => /from approval_requests/.test(sql)).length).toBeGreaterThanOrEqual(4);
      expect(lists.length).toBeGreaterThanOrEqual(2);
      for (const sql of lists) {
        const { rows } = await admin.query(`explain (format json) ${sql}`);
        expect(JSON.stringify(rows[0]['QUERY PLAN']), sql).not.toMatch(/"Node Type":"Sort"/);
      }
    } finally {
      await admin.end();
    }
  });
});

/**
 * A scan that walks the tenant's rows to find one it could have reached by a unique key: its index
 * condition bounds the tenant only, and the key's column (`id = …`, `run_id = …`) is applied as a filter;
 * or the key's column is in the index condition but behind a column of the index it does not bound
 * (`tenant_id = … and id = …` on (tenant_id, workflow, status, created_at, id)): PostgreSQL shows it as
 * an index condition, yet walks every entry of the bounded prefix (the tenant's runs) to test it;
 * or the key is matched by the join above the scan (`Join Filter: (r.id = a.run_id)`), the scan bounding
 * only the tenant: each execution of the join reads the tenant's rows. A bitmap heap scan's filter
 * counts for its bitmap index scan (which names no table).
 */
function tenantWalks(plan: any, uniqueColumns: Map<string, Set<string>>, indexColumns: Map<string, string[]>, out: string[] = [], joinFilter = ''): string[] {
  const keys = uniqueColumns.get(plan['Relation Name'] as string);
  if (keys && (plan['Index Name'] || plan['Node Type'] === 'Seq Scan')) {
    const cond = String(plan['Index Cond'] ?? '');
    const alias = String(plan.Alias ?? plan['Relation Name']);
    const joined = [...keys].filter((col) => new RegExp(`\\b${alias}\\.${col}\\b`).test(joinFilter));
    const filter = String(plan.Filter ?? '');
    const equal = (col: string, text: string) => new RegExp(`\\b${col}\\)?(::[a-z ]+)? = `).test(text);
    const names = (text: string) => [...keys].filter((col) => equal(col, text));
    const where = `${plan['Index Name'] ?? 'Seq Scan'} on ${plan['Relation Name']}: cond ${cond || 'none'}`;
    // The scan's own condition names no key column (only the tenant, or nothing), its filter does.
    if (names(cond).length === 0 && names(filter).length > 0) out.push(`${where}, filter ${filter}`);
    // Or the join above it matches the key: its Join Filter names this scan's key column.
    if (names(cond).length === 0 && joined.length > 0) out.push(`${where}, join filter ${joinFilter}`);
    // The key's column is bounded only if every column before it in the index is.
    const columns = indexColumns.get(plan['Index Name'] as string) ?? [];
    const prefix = columns.findIndex((col) => !equal(col, cond));
    const unbounded = prefix < 0 ? [] : names(cond).filter((col) => columns.indexOf(col) > prefix);
    if (unbounded.length) out.push(`${where}, ${unbounded.join(', ')} behind unbounded ${columns[prefix]}`);
  }
  // A bitmap scan's index condition is its Bitmap Index Scan's, which names no table: it is given the heap scan's table and filter.
  const heap = plan['Node Type'] === 'Bitmap Heap Scan';
  for (const child of plan.Plans ?? []) {
    const scan = heap && child['Node Type'] === 'Bitmap Index Scan' ? { ...child, 'Relation Name': plan['Relation Name'], Alias: plan.Alias, Filter: plan.Filter } : child;
    tenantWalks(scan, uniqueColumns, indexColumns, out, heap ? joinFilter : String(plan['Join Filter'] ?? joinFilter));
  }
  return out;
}

/** The walks allowed on a fresh database (see the test below): each one statement, and nothing else. */
const EXEMPT = [
  {
    name: "start_run's insert-or-find: the existing run by its idempotency hash",
    walk: /^durable_runs_\w+ on durable_runs: cond \(tenant_id = \$\d+\), filter \(\(idempotency_hash\)::text = /,
    sql: /^with ins as \( insert into durable_runs /,
  },
  {
    // Run by the maintenance job as the system role, across tenants: planned here as the application
    // role, the tenant's policy is the only condition its scan can bound, and the keys to delete are
    // matched by a join filter. Not a tenant's walk where it runs. The batch picks its keys in a
    // materialized CTE since d932a0d (a batch is judged short by the keys it picked), which the delete
    // matches by `picked.id`.
    name: 'the expired idempotency keys deleted in batches (system role)',
    walk: /^idempotency_keys_\w+ on idempotency_keys: cond \(tenant_id = \$\d+\), join filter \(idempotency_keys_\d+\.id = picked\.id\)/,
    sql: /^with picked as materialized \(select id from idempotency_keys where expires_at < now\(\) limit \$1(::int4)?\), gone as \(delete from idempotency_keys where id in \(select id from picked\) /,
  },
];

describe('plans that cannot grow with data', () => {
  it('statements that name one row by a unique key are planned on that key as cached generic plans on tables without statistics (a fresh database), but for two named ones', async () => {
    // Prepared statements keep a generic plan per connection; planned while a table is new and has no
    // statistics, every index leading with tenant_id costs the same, and a plan that reached one run
    // through the tenant's (tenant_id, status) index read every run of the tenant on each execution,
    // until the connection closed (PostgreSQL CPU per run grew 2.5× over 12,000 runs of one tenant).
    expect(bound.size).toBeGreaterThan(10);
    const db = await createTestDatabase();
    const app = new pg.Client({ connectionString: db.appUrl });
    await app.connect();
    try {
      const unique = await db.admin(
        `select t.relname as table, a.attname as column
           from pg_index x join pg_class t on t.oid = x.indrelid
           join pg_attribute a on a.attrelid = t.oid and a.attnum = any(x.indkey)
          where x.indisunique and t.relrowsecurity and a.attname <> 'tenant_id'`,
      );
      const uniqueColumns = new Map<string, Set<string>>();
      for (const r of unique.rows as { table: string; column: string }[]) uniqueColumns.set(r.table, (uniqueColumns.get(r.table) ?? new Set()).add(r.column));
      expect(uniqueColumns.get('durable_runs')?.has('id')).toBe(true);
      // Every index of those tables, its key columns in order (INCLUDE columns left out).
      const columnsOf = await db.admin(
        `select i.relname as index, array_agg(a.attname::text order by k.n) as columns
           from pg_index x join pg_class i on i.oid = x.indexrelid join pg_class t on t.oid = x.indrelid
           cross join lateral unnest(x.indkey[0:x.indnkeyatts - 1]) with ordinality k(attnum, n)
           join pg_attribute a on a.attrelid = t.oid and a.attnum = k.attnum
          where t.relrowsecurity group by i.relname`,
      );
      const indexColumns = new Map((columnsOf.rows as { index: string; columns: string[] }[]).map((r) => [r.index, r.columns]));
      expect(indexColumns.get('durable_runs_tenant_id_id_unique')).toEqual(['tenant_id', 'id']);
      const never = await db.admin(`select count(*)::int as n from pg_class where relname = 'durable_runs' and reltuples < 0`);
      expect(never.rows[0].n).toBe(1);
      const found: string[] = [];
      let planned = 0;
      for (const [text, values] of bound) {
        const sql = text.replace(DEFER_UNTIL_NEXT, '').replace(LAST_IN_TRANSACTION, '').trim();
        if (SKIP.test(sql) || sql.includes(';')) continue;
        await app.query(`begin; set local plan_cache_mode = force_generic_plan; select set_config('app.tenant_id', '${tenant}', true)`);
        try {
          await app.query(`prepare generic_plan as ${sql}`);
          const args = inlineStatement({ text: values.map((_, i) => `$${i + 1}`).join(', '), values });
          const { rows } = await app.query(`explain (format json) execute generic_plan(${args})`);
          planned++;
          for (const walk of tenantWalks(rows[0]['QUERY PLAN'][0].Plan, uniqueColumns, indexColumns)) found.push(`${walk}:\n  ${sql.replace(/\s+/g, ' ').slice(0, 300)}`);
        } finally {
          await app.query('rollback');
          await app.query('deallocate all');
        }
      }
      expect(planned).toBeGreaterThan(10);
      // Exactly these are left, named by their statement and the walk their generic plan makes:
      // start_run's fallback read of an existing run by its idempotency hash (run only when the
      // submission already has its run), left to the schedule that prepares statements again (after 100
      // executions per connection; coalescing-client.test.ts shows a plan replaced), and the system
      // role's deletion of expired idempotency keys, which is no tenant's walk (EXEMPT). Every run statement is planned by key:
      // the runs list's index over every run, walked this way, cost each step a walk of its tenant's
      // runs (PostgreSQL CPU per run up two thirds). So is every approval request statement: the
      // approvals list's indexes are partial like the runs' (approval.entities.ts), a lookup by id has
      // its own index, and one by run names the run's id as a value (approval.service.ts).
      // A run statement that names one run and a status (a retry's `failed`, the sweeper's
      // `pending`/`running`, the timer repair's `waiting`, the resumed job's holder prelude's `running`) proves the predicate of a partial list index,
      // so it tests `status || ''`: the retried and swept runs above are here for that.
      const exempt = (f: string) => EXEMPT.find((e) => e.walk.test(f) && e.sql.test(f.slice(f.indexOf(':\n') + 2).trim()))?.name ?? f;
      expect([...new Set(found.map(exempt))].sort()).toEqual(EXEMPT.map((e) => e.name).sort());
    } finally {
      await app.end();
      await db.drop();
    }
  });
});

/**
 * The scans of `table` in a plan run with EXPLAIN (ANALYZE, BUFFERS), each with the shared blocks it
 * touched over all its loops (a bitmap heap scan's count includes its bitmap index scans').
 */
function scansOf(plan: any, table: string, out: { scan: string; blocks: number }[] = []): { scan: string; blocks: number }[] {
  if (plan['Relation Name'] === table) {
    const index = plan['Index Name'] ?? plan.Plans?.map((p: any) => p['Index Name']).join(' & ');
    out.push({ scan: `${plan['Node Type']}${index ? ` on ${index}` : ''} (cond ${plan['Index Cond'] ?? plan['Recheck Cond'] ?? 'none'}, filter ${plan.Filter ?? 'none'})`, blocks: (plan['Shared Hit Blocks'] ?? 0) + (plan['Shared Read Blocks'] ?? 0) });
    return out;
  }
  for (const child of plan.Plans ?? []) scansOf(child, table, out);
  return out;
}

describe('reads by status that cannot grow with the runs of other statuses', () => {
  it("the tenant's runs read by their status — admission's count of runs in flight, a bulk cancel's batches, the runs list's branches — read those runs only, custom or cached generic plan, beside many waiting and ended runs", async () => {
    // Admission counts the runs pending or running (a run waiting for a human is not in flight:
    // reliability.md), on every submission; a tenant can have many runs waiting on approvals and its
    // whole history ended. A plan that reaches the runs it counts through an index of every active run
    // (`status` a filter, or a condition behind an unbounded `workflow`) reads every waiting run on each
    // submission. A bulk cancel's statuses were a parameter (`status = any($3)`): a generic plan (a
    // prepared statement's, after five executions) cannot prove a partial index's predicate from it,
    // and read the tenant's runs through its unique key, or every tenant's runs of those statuses.
    const byStatus = [...bound].filter(([text]) => /\bfrom durable_runs where tenant_id = \$\d+ (and workflow = \$\d+ )?and status (in \(|= any\(|= ')/.test(text));
    expect(byStatus.some(([text]) => /select count\(\*\) from \(select 1 from durable_runs/.test(text))).toBe(true);
    // A bulk cancel's batches and its look for runs left: one range per status, merged oldest first.
    expect(byStatus.filter(([text]) => /^select id from \(\(select created_at, id from durable_runs where .* union all /.test(text)).length).toBeGreaterThanOrEqual(2);
    expect(byStatus.some(([text]) => /^select id from \(\(select created_at, id from durable_runs where .* status in \('running', 'waiting', 'pending'\)/.test(text))).toBe(true);
    const db = await createTestDatabase();
    // Planned on a table without statistics, as on this machine (autovacuum off) and on a production table
    // before its first autoanalyze: with autovacuum on, one could analyze durable_runs mid-test, and the
    // plans below would be of another kind than the one this test means. Pinned off for this database's table.
    await db.admin('alter table durable_runs set (autovacuum_enabled = false)');
    const other = randomUUID();
    // Ten runs in flight of the tenant's (pending and running), 3,000 waiting and 3,000 ended; another
    // tenant's 3,000 pending runs (a statement reading runs by status across tenants reads those).
    await db.admin(
      `insert into durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, correlation_id, step_count, created_at, updated_at, completed_at)
       select gen_random_uuid(), s.tenant_id, 'golden-path', 1, md5(random()::text), s.status, 'seeded', '{}', 'seeded', 4,
              now() - g * interval '1 second', now() - g * interval '1 second', case when s.status in ('completed', 'failed', 'cancelled') then now() end
         from (values ($1::uuid, 'pending', 5), ($1, 'running', 5), ($1, 'waiting', 3000), ($1, 'completed', 2000), ($1, 'failed', 500), ($1, 'cancelled', 500), ($2::uuid, 'pending', 3000)) s(tenant_id, status, n),
              generate_series(1, s.n) g`,
      [tenant, other],
    );
    const app = new pg.Client({ connectionString: db.appUrl });
    await app.connect();
    try {
      const found: string[] = [];
      for (const [text, values] of bound) {
        if (!byStatus.some(([t]) => t === text)) continue;
        const sql = text.replace(DEFER_UNTIL_NEXT, '').replace(LAST_IN_TRANSACTION, '').trim();
        for (const mode of ['force_custom_plan', 'force_generic_plan']) {
          await app.query(`begin; set local plan_cache_mode = ${mode}; select set_config('app.tenant_id', '${tenant}', true)`);
          try {
            await app.query(`prepare by_status as ${sql}`);
            const args = inlineStatement({ text: values.map((_, i) => `$${i + 1}`).join(', '), values });
            const { rows } = await app.query(`explain (analyze, buffers, timing off, format json) execute by_status(${args})`);
            // An index descent and a heap page or two; walking the 3,000 waiting runs reads tens of pages.
            for (const { scan, blocks } of scansOf(rows[0]['QUERY PLAN'][0].Plan, 'durable_runs')) {
              if (blocks > 10) found.push(`${mode}: ${scan} read ${blocks} blocks:\n  ${sql.replace(/\s+/g, ' ').slice(0, 400)}`);
            }
          } finally {
            await app.query('rollback');
            await app.query('deallocate all');
          }
        }
      }
      expect(found).toEqual([]);
      // Still no statistics when the last plan was made (reltuples < 0: never analyzed nor vacuumed).
      const never = await db.admin(`select reltuples < 0 as never, (select count(*)::int from pg_stats where tablename = 'durable_runs') as stats from pg_class where relname = 'durable_runs'`);
      expect(never.rows).toEqual([{ never: true, stats: 0 }]);
    } finally {
      await app.end();
      await db.drop();
    }
  });
});
