/**
 * Per-tenant limit overrides set by a platform operator at runtime (ADR 0014), against the real stack
 * (PostgreSQL as the application role, Redis, the production worker host): the operator API, its
 * roles and validation, RLS on tenant_limits, the API's runs-in-flight check and the workers' cap on a
 * tenant's executing run jobs with an override, and the Redis copy re-seeded after a flush.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, CLASS_A_SUBMISSION, newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { capturedLog } from '../helpers/log-capture.ts';
import { holdTable } from '../helpers/table-lock.ts';
import { heldGoldenPath, startRunHost, wrappedGoldenPath } from '../helpers/run-host.ts';
import { systemEm, tenantEm } from '../../src/platform/db/tenant-em.ts';
import { OPERATOR_ROLE } from '../../src/platform/http/admin-auth.middleware.ts';
import { OPERATOR_DB_ROLE } from '../../src/platform/db/tenant-owned.ts';
import { TenantLimitsRow } from '../../src/platform/limits/tenant-limits.entity.ts';
import { sqlState } from '../helpers/sql-state.ts';

const LONG = 120_000;
const IN_FLIGHT_DEFAULT = 10;
const ACTIVE_DEFAULT = 4;
const limitsPath = (tenant: string) => `/api/v1/operator/tenants/${tenant}/limits`;

async function submit(stack: TestStack, token: string) {
  return api(stack, 'POST', '/api/v1/golden-path/run', { token, body: CLASS_A_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
}

/** A transaction as the operator routes run theirs (ADR 0014): bound to `tenant`, as the operator role. */
function asOperatorRole<T>(stack: TestStack, tenant: string, sql: string, params: unknown[] = []) {
  return tenantEm(stack.container.orm, tenant).transactional(async (em) => {
    await em.execute(`select set_config('role', ?, true)`, [OPERATOR_DB_ROLE]);
    return em.execute<T[]>(sql, params);
  });
}

async function storedRow(stack: TestStack, tenant: string) {
  const { rows } = await stack.db.admin(`select max_active_runs, max_runs_in_flight, updated_by from tenant_limits where tenant_id = $1`, [tenant]);
  return rows[0];
}

describe('operator limits API', () => {
  let stack: TestStack;
  let operator: string;
  const log = capturedLog();
  beforeAll(async () => {
    stack = await startStack({
      logDestination: log.destination,
      env: {
        LOG_LEVEL: 'info',
        MAX_RUNS_IN_FLIGHT_PER_TENANT: String(IN_FLIGHT_DEFAULT),
        WORKER_MAX_ACTIVE_RUNS_PER_TENANT: String(ACTIVE_DEFAULT),
        RATE_LIMIT_PER_MINUTE: '0',
        API_MAX_INFLIGHT_PER_TENANT: '0',
      },
    });
    // An operator's token names a tenant of its own, like any token: not the tenant it manages.
    operator = await stack.token({ tenantId: newTenant(), sub: 'ops-alice', roles: [OPERATOR_ROLE] });
  }, LONG);
  afterAll(async () => stack?.stop());

  it('PUT, GET and DELETE round trip; a PUT replays under its Idempotency-Key; the workers\' Redis copy follows', async () => {
    const tenant = newTenant();
    const before = await api(stack, 'GET', limitsPath(tenant), { token: operator });
    expect(before.status, before.text).toBe(200);
    expect(before.json).toEqual({
      tenant_id: tenant,
      max_active_runs: { effective: ACTIVE_DEFAULT, source: 'default', override: null, default: ACTIVE_DEFAULT, enforced: true },
      max_runs_in_flight: { effective: IN_FLIGHT_DEFAULT, source: 'default', override: null, default: IN_FLIGHT_DEFAULT, enforced: true },
      updated_by: null,
      updated_at: null,
    });

    const key = randomUUID();
    const body = { max_active_runs: 1, max_runs_in_flight: null };
    const put = await api(stack, 'PUT', limitsPath(tenant), { token: operator, body, headers: { 'Idempotency-Key': key } });
    expect(put.status, put.text).toBe(200);
    expect(put.json.max_active_runs).toEqual({ effective: 1, source: 'override', override: 1, default: ACTIVE_DEFAULT, enforced: true });
    expect(put.json.max_runs_in_flight).toMatchObject({ effective: IN_FLIGHT_DEFAULT, source: 'default', override: null });
    expect(put.json.updated_by).toBe('ops-alice');
    expect(await storedRow(stack, tenant)).toEqual({ max_active_runs: 1, max_runs_in_flight: null, updated_by: 'ops-alice' });
    expect(await stack.redis.hget(`${stack.prefix}:tenant-limits`, tenant)).toBe('1');

    const replay = await api(stack, 'PUT', limitsPath(tenant), { token: operator, body, headers: { 'Idempotency-Key': key } });
    expect(replay.status).toBe(200);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(replay.json).toEqual(put.json);
    // The same key for another body is the standard 422.
    const reused = await api(stack, 'PUT', limitsPath(tenant), { token: operator, body: { ...body, max_active_runs: 2 }, headers: { 'Idempotency-Key': key } });
    expect(reused.status).toBe(422);
    expect(reused.json.code).toBe('idempotency_key_reused');

    const got = await api(stack, 'GET', limitsPath(tenant), { token: operator });
    expect(got.json).toEqual(put.json);

    // Without a key: 400, nothing changed.
    const keyless = await api(stack, 'PUT', limitsPath(tenant), { token: operator, body: { max_active_runs: 3, max_runs_in_flight: 3 } });
    expect(keyless.status).toBe(400);
    expect(await storedRow(stack, tenant)).toMatchObject({ max_active_runs: 1 });

    const del = await api(stack, 'DELETE', limitsPath(tenant), { token: operator, headers: { 'Idempotency-Key': randomUUID() } });
    expect(del.status, del.text).toBe(200);
    expect(del.json).toEqual(before.json);
    expect(await storedRow(stack, tenant)).toBeUndefined();
    expect(await stack.redis.hget(`${stack.prefix}:tenant-limits`, tenant)).toBeNull();

    // One audit line per change: the PUT and the DELETE, not the replay, the refused requests or the GETs.
    const audit = log.lines.filter((l) => l.security_event === 'tenant_limits_changed' && l.tenant_id === tenant);
    expect(audit.map((l) => ({ changed_by: l.changed_by, previous: l.previous, overrides: l.overrides }))).toEqual([
      { changed_by: 'ops-alice', previous: { max_active_runs: null, max_runs_in_flight: null }, overrides: { max_active_runs: 1, max_runs_in_flight: null } },
      { changed_by: 'ops-alice', previous: { max_active_runs: 1, max_runs_in_flight: null }, overrides: { max_active_runs: null, max_runs_in_flight: null } },
    ]);
  });

  it("a tenant's admin or submitter gets 403, and changes nothing", async () => {
    const tenant = newTenant();
    for (const roles of [['admin'], ['approver'], []]) {
      const token = await stack.token({ tenantId: tenant, sub: `user-${roles.join('-')}`, roles });
      expect((await api(stack, 'GET', limitsPath(tenant), { token })).status).toBe(403);
      const put = await api(stack, 'PUT', limitsPath(tenant), { token, body: { max_active_runs: 50, max_runs_in_flight: 50 }, headers: { 'Idempotency-Key': randomUUID() } });
      expect(put.status).toBe(403);
      expect(put.headers.get('content-type')).toMatch(/^application\/problem\+json/);
      expect((await api(stack, 'DELETE', limitsPath(tenant), { token, headers: { 'Idempotency-Key': randomUUID() } })).status).toBe(403);
    }
    expect(await storedRow(stack, tenant)).toBeUndefined();
    expect((await api(stack, 'GET', limitsPath(tenant))).status).toBe(401);
  });

  it('a bad body is refused with problem+json and stores nothing', async () => {
    const tenant = newTenant();
    const bad: unknown[] = [
      {},
      { max_active_runs: 0, max_runs_in_flight: null },
      { max_active_runs: 1.5, max_runs_in_flight: null },
      { max_active_runs: 100_001, max_runs_in_flight: null },
      { max_active_runs: null, max_runs_in_flight: -1 },
      { max_active_runs: null, max_runs_in_flight: '5' },
      { max_active_runs: null, max_runs_in_flight: 5, extra: 1 },
    ];
    for (const body of bad) {
      const res = await api(stack, 'PUT', limitsPath(tenant), { token: operator, body, headers: { 'Idempotency-Key': randomUUID() } });
      expect(res.status, JSON.stringify(body)).toBe(422);
      expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
      expect(res.json.code).toBe('validation_failed');
    }
    const notUuid = await api(stack, 'PUT', limitsPath('not-a-tenant'), { token: operator, body: { max_active_runs: 1, max_runs_in_flight: 1 }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(notUuid.status).toBe(404);
    expect(await storedRow(stack, tenant)).toBeUndefined();
    expect(await stack.redis.hget(`${stack.prefix}:tenant-limits`, tenant)).toBeNull();
  });

  it('RLS: the row is visible to the application role only with its tenant as the context', async () => {
    const tenant = newTenant();
    const put = await api(stack, 'PUT', limitsPath(tenant), { token: operator, body: { max_active_runs: 2, max_runs_in_flight: 3 }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(put.status).toBe(200);
    const orm = stack.container.orm;
    const [role] = await orm.em.fork().getConnection().execute<{ r: string }[]>('select current_user::text as r');
    expect(role!.r).toBe('dealix_app');
    expect(await orm.em.fork().getConnection().execute(`select * from tenant_limits where tenant_id = ?`, [tenant])).toEqual([]);
    expect(await tenantEm(orm, newTenant()).transactional((em) => em.execute(`select * from tenant_limits where tenant_id = ?`, [tenant]))).toEqual([]);
    const own = await tenantEm(orm, tenant).transactional((em) => em.execute<{ max_runs_in_flight: number }[]>(`select max_runs_in_flight from tenant_limits where tenant_id = ?`, [tenant]));
    expect(own).toEqual([{ max_runs_in_flight: 3 }]);
    // Nor can another tenant's context write it, even as the operator role (the isolation policy binds its writes).
    await expect(
      asOperatorRole(stack, newTenant(), `insert into tenant_limits (tenant_id, max_runs_in_flight, updated_by, updated_at) values (?, 1, 'x', now())`, [tenant]),
    ).rejects.toThrow(/row-level security/);
    expect(await asOperatorRole(stack, newTenant(), `update tenant_limits set max_runs_in_flight = 1 where tenant_id = ? returning tenant_id`, [tenant])).toEqual([]);
    expect(await asOperatorRole(stack, newTenant(), `delete from tenant_limits where tenant_id = ? returning tenant_id`, [tenant])).toEqual([]);
    expect(await storedRow(stack, tenant)).toMatchObject({ max_runs_in_flight: 3 });
    // The system role (the workers' re-seed) reads every tenant's active-run cap, and nothing else of the row, nor writes it.
    const system = () => systemEm(orm);
    expect(await system().transactional((em) => em.execute(`select tenant_id, max_active_runs from tenant_limits where tenant_id = ?`, [tenant]))).toEqual([{ tenant_id: tenant, max_active_runs: 2 }]);
    for (const column of ['max_runs_in_flight', 'updated_by', 'updated_at', '*']) {
      await expect(system().transactional((em) => em.execute(`select ${column} from tenant_limits`)), column).rejects.toThrow(/permission denied/);
    }
    await expect(system().transactional((em) => em.execute(`update tenant_limits set max_active_runs = 1 where tenant_id = ?`, [tenant]))).rejects.toThrow(/permission denied/);
  });

  it("the database refuses a tenant-bound transaction's write of its own tenant's row: only the operator role writes tenant_limits; the tenant's reads still work", async () => {
    const orm = stack.container.orm;
    const tenant = newTenant();
    const put = await api(stack, 'PUT', limitsPath(tenant), { token: operator, body: { max_active_runs: 2, max_runs_in_flight: 3 }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(put.status, put.text).toBe(200);
    // Code bound to the tenant (a workflow step, a tenant route: tenantEm as the application role) raising its own limits.
    const own = (sql: string, params: unknown[] = []) => sqlState(tenantEm(orm, tenant).transactional((em) => em.execute(sql, params)));
    expect(await own(`update tenant_limits set max_runs_in_flight = 1000000 where tenant_id = ?`, [tenant])).toBe('42501');
    expect(await own(`delete from tenant_limits where tenant_id = ?`, [tenant])).toBe('42501');
    expect(
      await own(
        `insert into tenant_limits (tenant_id, max_runs_in_flight, updated_by, updated_at) values (?, 1000000, 'step', now())
         on conflict (tenant_id) do update set max_runs_in_flight = excluded.max_runs_in_flight`,
        [tenant],
      ),
    ).toBe('42501');
    expect(await sqlState(tenantEm(orm, tenant).nativeUpdate(TenantLimitsRow, { tenantId: tenant }, { maxActiveRuns: 100_000 }))).toBe('42501');
    // A tenant without a row cannot create one either.
    const fresh = newTenant();
    expect(await sqlState(tenantEm(orm, fresh).transactional((em) => em.execute(`insert into tenant_limits (tenant_id, max_runs_in_flight, updated_by, updated_at) values (?, 1000000, 'step', now())`, [fresh])))).toBe('42501');
    expect(await storedRow(stack, fresh)).toBeUndefined();
    expect(await storedRow(stack, tenant)).toEqual({ max_active_runs: 2, max_runs_in_flight: 3, updated_by: 'ops-alice' });
    // Its reads still work (the admission statement reads max_runs_in_flight under the tenant's context).
    expect(await tenantEm(orm, tenant).transactional((em) => em.execute(`select max_active_runs, max_runs_in_flight from tenant_limits where tenant_id = ?`, [tenant]))).toEqual([
      { max_active_runs: 2, max_runs_in_flight: 3 },
    ]);
    // The operator API still writes and removes it.
    const againKey = randomUUID();
    const againBody = { max_active_runs: null, max_runs_in_flight: 5 };
    const again = await api(stack, 'PUT', limitsPath(tenant), { token: operator, body: againBody, headers: { 'Idempotency-Key': againKey } });
    expect(again.status, again.text).toBe(200);
    // The route's transaction was the application role again when it stored the key's outcome (the
    // operator role has no rights on idempotency_keys): the same key replays that stored outcome.
    const replay = await api(stack, 'PUT', limitsPath(tenant), { token: operator, body: againBody, headers: { 'Idempotency-Key': againKey } });
    expect(replay.status, replay.text).toBe(200);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(replay.json).toEqual(again.json);
    expect(await storedRow(stack, tenant)).toEqual({ max_active_runs: null, max_runs_in_flight: 5, updated_by: 'ops-alice' });
    const del = await api(stack, 'DELETE', limitsPath(tenant), { token: operator, headers: { 'Idempotency-Key': randomUUID() } });
    expect(del.status, del.text).toBe(200);
    expect(await storedRow(stack, tenant)).toBeUndefined();
  });

  it("GET /operator/tenant-limits lists every tenant's overrides, by tenant id, and its pages cover every row exactly once", async () => {
    const listed = [newTenant(), newTenant(), newTenant(), newTenant(), newTenant()];
    for (const [i, tenant] of listed.entries()) {
      const body = { max_active_runs: i + 1, max_runs_in_flight: i % 2 ? null : 100 + i };
      const res = await api(stack, 'PUT', limitsPath(tenant), { token: operator, body, headers: { 'Idempotency-Key': randomUUID() } });
      expect(res.status, res.text).toBe(200);
    }
    // A tenant whose overrides were removed has no row, and is not listed.
    const removed = newTenant();
    await api(stack, 'PUT', limitsPath(removed), { token: operator, body: { max_active_runs: 1, max_runs_in_flight: 1 }, headers: { 'Idempotency-Key': randomUUID() } });
    expect((await api(stack, 'DELETE', limitsPath(removed), { token: operator, headers: { 'Idempotency-Key': randomUUID() } })).status).toBe(200);

    const items: { tenant_id: string }[] = [];
    const pageSizes: number[] = [];
    let cursor: string | null = null;
    do {
      const res = await api(stack, 'GET', `/api/v1/operator/tenant-limits?limit=2${cursor ? `&cursor=${cursor}` : ''}`, { token: operator });
      expect(res.status, res.text).toBe(200);
      items.push(...res.json.items);
      pageSizes.push(res.json.items.length);
      cursor = res.json.next_cursor;
    } while (cursor);
    // Every row of the table (other tests' tenants too), each once, in tenant id order, in full pages but the last.
    const { rows } = await stack.db.admin(`select tenant_id from tenant_limits order by tenant_id`);
    const ids = items.map((i) => i.tenant_id);
    expect(ids).toEqual(rows.map((r) => r.tenant_id));
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids).toEqual(expect.arrayContaining(listed));
    expect(ids).not.toContain(removed);
    expect(pageSizes.slice(0, -1).every((n) => n === 2)).toBe(true);
    // Each item is the tenant's limits as its own GET shows them, updated_by and updated_at included.
    for (const tenant of listed) {
      const one = await api(stack, 'GET', limitsPath(tenant), { token: operator });
      expect(items.find((i) => i.tenant_id === tenant)).toEqual(one.json);
      expect(one.json.updated_by).toBe('ops-alice');
      expect(one.json.updated_at).not.toBeNull();
    }
    // The default page (50) holds them in the same order.
    const first = await api(stack, 'GET', '/api/v1/operator/tenant-limits', { token: operator });
    expect(first.json.items.map((i: { tenant_id: string }) => i.tenant_id)).toEqual(ids.slice(0, 50));
  });

  it('GET /operator/tenant-limits: a tenant role gets 403, no token 401, a bad limit or cursor 400 problem+json', async () => {
    const tenant = newTenant();
    await api(stack, 'PUT', limitsPath(tenant), { token: operator, body: { max_active_runs: 3, max_runs_in_flight: null }, headers: { 'Idempotency-Key': randomUUID() } });
    for (const roles of [['admin'], ['approver'], []]) {
      const token = await stack.token({ tenantId: tenant, sub: `user-${roles.join('-')}`, roles });
      const res = await api(stack, 'GET', '/api/v1/operator/tenant-limits', { token });
      expect(res.status, roles.join()).toBe(403);
      expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    }
    expect((await api(stack, 'GET', '/api/v1/operator/tenant-limits')).status).toBe(401);
    // A cursor of a time-ordered list (runs, deliveries) is not this list's.
    const timeCursor = Buffer.from(`${new Date().toISOString()}|${randomUUID()}`).toString('base64url');
    for (const query of ['limit=0', 'limit=101', 'limit=abc', 'limit=1e1', 'cursor=nonsense', `cursor=${timeCursor}`, `cursor=${Buffer.from('k|not-a-uuid').toString('base64url')}`, 'tenant_id=x']) {
      const res = await api(stack, 'GET', `/api/v1/operator/tenant-limits?${query}`, { token: operator });
      expect(res.status, query).toBe(400);
      expect(res.headers.get('content-type'), query).toMatch(/^application\/problem\+json/);
      expect(res.json.code, query).toBe('validation_failed');
    }
  });

  it("the operator role's cross-tenant read is its own: a tenant context still sees only its own row, the system role only its columns", async () => {
    const orm = stack.container.orm;
    const [a, b] = [newTenant(), newTenant()];
    for (const tenant of [a, b]) {
      await api(stack, 'PUT', limitsPath(tenant), { token: operator, body: { max_active_runs: 2, max_runs_in_flight: 7 }, headers: { 'Idempotency-Key': randomUUID() } });
    }
    for (const tenant of [a, b]) {
      const seen = await tenantEm(orm, tenant).transactional((em) => em.execute<{ tenant_id: string }[]>(`select tenant_id from tenant_limits`));
      expect(seen).toEqual([{ tenant_id: tenant }]);
    }
    expect(await orm.em.fork().getConnection().execute(`select tenant_id from tenant_limits`)).toEqual([]);
    // The operator role reads every row (the listing), bound to any tenant or none.
    const all = await asOperatorRole<{ tenant_id: string }>(stack, newTenant(), `select tenant_id from tenant_limits`);
    expect(all.map((r) => r.tenant_id)).toEqual(expect.arrayContaining([a, b]));
    // The system role still reads only the re-seed's columns.
    await expect(systemEm(orm).transactional((em) => em.execute(`select max_runs_in_flight from tenant_limits`))).rejects.toThrow(/permission denied/);
  });

  it('no row can hold a cap the API refuses (0, negative, past the maximum): 0 or less would refuse every submission of the tenant, or fail it with a 500', async () => {
    const tenant = newTenant();
    // As the operator role (the only writer), under the tenant: a row the API did not write.
    const insert = (column: string, value: number) => asOperatorRole(stack, tenant, `insert into tenant_limits (tenant_id, ${column}, updated_by, updated_at) values (?, ?, 'x', now())`, [tenant, value]);
    for (const [column, value] of [['max_active_runs', 0], ['max_active_runs', -1], ['max_active_runs', 100_001], ['max_runs_in_flight', 0], ['max_runs_in_flight', -5], ['max_runs_in_flight', 1_000_001]] as const) {
      await expect(insert(column, value), `${column} ${value}`).rejects.toThrow(/violates check constraint "tenant_limits_/);
    }
    expect(await storedRow(stack, tenant)).toBeUndefined();
  });

  it('a tenant with max_runs_in_flight 2 gets 429 for its third run in flight; another tenant does not', async () => {
    // No worker: accepted runs stay pending, i.e. in flight.
    const capped = newTenant();
    const other = newTenant();
    const put = await api(stack, 'PUT', limitsPath(capped), { token: operator, body: { max_active_runs: null, max_runs_in_flight: 2 }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(put.json.max_runs_in_flight).toMatchObject({ effective: 2, source: 'override' });
    const tokC = await stack.token({ tenantId: capped, sub: 'c' });
    const tokO = await stack.token({ tenantId: other, sub: 'o' });
    const results = await Promise.all(Array.from({ length: 3 }, () => submit(stack, tokC)));
    expect(results.map((r) => r.status).sort()).toEqual([202, 202, 429]);
    const refused = results.find((r) => r.status === 429)!;
    expect(refused.json).toMatchObject({ code: 'rate_limited', detail: 'The tenant already has 2 runs in flight.' });
    expect(refused.headers.get('retry-after')).toBe('5');
    for (let i = 0; i < 3; i++) expect((await submit(stack, tokO)).status).toBe(202);
    // Removing the override: the default (10) applies to the next submission.
    await api(stack, 'DELETE', limitsPath(capped), { token: operator, headers: { 'Idempotency-Key': randomUUID() } });
    expect((await submit(stack, tokC)).status).toBe(202);
  });

  it("workers: with a tenant's override of 1 (the setting 4) two of its runs never execute at once; another tenant runs up to 4", { timeout: LONG }, async () => {
    const capped = newTenant();
    const other = newTenant();
    expect((await api(stack, 'PUT', limitsPath(capped), { token: operator, body: { max_active_runs: 1, max_runs_in_flight: null }, headers: { 'Idempotency-Key': randomUUID() } })).status).toBe(200);
    const executing = new Map<string, number>();
    const most = new Map<string, number>();
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    // Every run of the two tenants stays in its first step until released: what executes at once is then
    // what the slots let in, not how fast a run ends.
    const wf = wrappedGoldenPath(stack, (step, seq) => async (input, ctx) => {
      const t = ctx.run.tenantId;
      // Runs the earlier tests left pending go through.
      if (t !== capped && t !== other) return step.run(input, ctx);
      executing.set(t, (executing.get(t) ?? 0) + 1);
      most.set(t, Math.max(most.get(t) ?? 0, executing.get(t)!));
      try {
        if (seq === 1) await released;
        return await step.run(input, ctx);
      } finally {
        executing.set(t, executing.get(t)! - 1);
      }
    });
    // Four jobs at once on a cap of four: the other tenant takes two, and two are left for the capped one.
    const host = startRunHost(stack, wf, 'override-host', {}, { concurrency: 4, maxActiveRunsPerTenant: ACTIVE_DEFAULT, parkDelayMs: () => 600_000 });
    try {
      const tokC = await stack.token({ tenantId: capped, sub: 'c' });
      const tokO = await stack.token({ tenantId: other, sub: 'o' });
      const otherRuns: string[] = [];
      for (let i = 0; i < 2; i++) otherRuns.push((await submit(stack, tokO)).json.run_id as string);
      await waitFor(() => (executing.get(other) ?? 0) === 2, { what: "the other tenant's two runs to execute at once" });
      const cappedRuns: string[] = [];
      for (let i = 0; i < 2; i++) cappedRuns.push((await submit(stack, tokC)).json.run_id as string);
      // Its second run is parked (with the setting's 4 it would be executing beside the first).
      const parkedKey = `${stack.prefix}:tenant-parked:${capped}`;
      await waitFor(async () => (executing.get(capped) ?? 0) >= 2 || ((executing.get(capped) ?? 0) === 1 && (await stack.redis.zcard(parkedKey)) === 1), {
        what: "the capped tenant's first run to execute and its second to be parked (or both to execute)",
      });
      expect(most.get(capped)).toBe(1);
      expect(await stack.redis.zcard(`${stack.prefix}:tenant-slots:${capped}`)).toBe(1);
      release();
      const done = (tok: string, id: string) =>
        waitFor(async () => (await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token: tok })).json?.status === 'completed', { timeoutMs: 60_000, what: `run ${id} to complete` });
      for (const id of cappedRuns) await done(tokC, id);
      for (const id of otherRuns) await done(tokO, id);
      expect(most.get(capped)).toBe(1);
      expect(most.get(other)).toBe(2);
    } finally {
      release();
      await host.stop();
    }
  });

  it("workers: raising a tenant's override lets its parked jobs in at its next acquire, up to the new cap, not after their fallback delay", { timeout: LONG }, async () => {
    const capped = newTenant();
    const put = (max: number) => api(stack, 'PUT', limitsPath(capped), { token: operator, body: { max_active_runs: max, max_runs_in_flight: null }, headers: { 'Idempotency-Key': randomUUID() } });
    expect((await put(1)).status).toBe(200);
    const { wf, state, release } = heldGoldenPath(stack, capped);
    // Parked jobs come back on their own only after 10 minutes: what runs within the test is what promotions let in.
    const host = startRunHost(stack, wf, 'raise-host', {}, { concurrency: 6, maxActiveRunsPerTenant: ACTIVE_DEFAULT, parkDelayMs: () => 600_000 });
    try {
      const tok = await stack.token({ tenantId: capped, sub: 'c' });
      const runs: string[] = [];
      for (let i = 0; i < 3; i++) runs.push((await submit(stack, tok)).json.run_id as string);
      const parkedKey = `${stack.prefix}:tenant-parked:${capped}`;
      await waitFor(async () => state.executing === 1 && (await stack.redis.zcard(parkedKey)) === 2, { what: 'one run executing and two parked under the override of 1' });
      expect((await put(3)).status).toBe(200);
      // The tenant's next acquire (a new run) finds two slots free with jobs parked: it wakes one, whose acquire fills the cap.
      runs.push((await submit(stack, tok)).json.run_id as string);
      await waitFor(() => state.executing === 3, { timeoutMs: 20_000, what: 'a parked run to be promoted into the raised cap beside the new one' });
      expect(await stack.redis.zcard(parkedKey)).toBe(1);
      release();
      for (const id of runs) {
        await waitFor(async () => (await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token: tok })).json?.status === 'completed', { timeoutMs: 60_000, what: `run ${id} to complete` });
      }
      expect(state.most).toBe(3);
    } finally {
      release();
      await host.stop();
    }
  });

  it("two first PUTs for one tenant at once: the second one's audit line names the first's overrides as previous", async () => {
    const tenant = newTenant();
    // Both PUTs reach the table while it is held, so they run side by side once it is released.
    const held = await holdTable(stack.db.ownerUrl, 'tenant_limits');
    const waiters = async () =>
      (await stack.db.admin(`select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock' and backend_type = 'client backend'`)).rows[0].n as number;
    try {
      const put = (max: number) => api(stack, 'PUT', limitsPath(tenant), { token: operator, body: { max_active_runs: max, max_runs_in_flight: null }, headers: { 'Idempotency-Key': randomUUID() } });
      const puts = [put(5), put(6)];
      await waitFor(async () => (await waiters()) >= 2, { what: 'both PUTs to wait' });
      await held.release();
      expect((await Promise.all(puts)).map((r) => r.status)).toEqual([200, 200]);
    } finally {
      await held.close();
    }
    const audit = log.lines.filter((l) => l.security_event === 'tenant_limits_changed' && l.tenant_id === tenant);
    const [first, second] = audit.map((l) => ({ previous: l.previous.max_active_runs, now: l.overrides.max_active_runs }));
    expect(first?.previous).toBeNull();
    expect(second?.previous).toBe(first?.now);
    expect((await storedRow(stack, tenant))?.max_active_runs).toBe(second?.now);
  });

  it("an operator's Idempotency-Key reused for another tenant's limits is 422, never a replay of the first tenant's answer", async () => {
    const [first, second] = [newTenant(), newTenant()];
    const key = randomUUID();
    const body = { max_active_runs: 2, max_runs_in_flight: 5 };
    expect((await api(stack, 'PUT', limitsPath(first), { token: operator, body, headers: { 'Idempotency-Key': key } })).status).toBe(200);
    const other = await api(stack, 'PUT', limitsPath(second), { token: operator, body, headers: { 'Idempotency-Key': key } });
    expect(other.status, other.text).toBe(422);
    expect(other.json.code).toBe('idempotency_key_reused');
    const del = await api(stack, 'DELETE', limitsPath(second), { token: operator, headers: { 'Idempotency-Key': key } });
    expect(del.status).toBe(422);
    expect(await storedRow(stack, second)).toBeUndefined();
    expect(await stack.redis.hget(`${stack.prefix}:tenant-limits`, second)).toBeNull();
    expect(await storedRow(stack, first)).toMatchObject({ max_active_runs: 2, max_runs_in_flight: 5 });
  });

  it('the Redis copy is re-seeded from PostgreSQL at worker start, after Redis lost its data, and every sweeper interval (a copy that missed a change heals)', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const hash = `${stack.prefix}:tenant-limits`;
    expect((await api(stack, 'PUT', limitsPath(tenant), { token: operator, body: { max_active_runs: 3, max_runs_in_flight: 7 }, headers: { 'Idempotency-Key': randomUUID() } })).status).toBe(200);
    await stack.redis.del(hash);
    // A worker's start copies every override back.
    const worker = await stack.spawnWorker();
    expect(await stack.redis.hget(hash, tenant)).toBe('3');
    // A flush (every key of the stack's prefix: the shared Redis serves other tests) loses the copy; the sweeper notices and re-seeds.
    const keys = await stack.redis.keys(`${stack.prefix}:*`);
    await stack.redis.del(...keys);
    await waitFor(async () => (await stack.redis.hget(hash, tenant)) === '3', { timeoutMs: 30_000, what: 'the override to be re-seeded after the flush' });
    // A copy that missed a change, with Redis otherwise intact (no flush for the sweeper to notice): a write-through
    // lost by an API that died after its commit, or a re-seed that raced a PUT. The periodic re-seed puts the truth back.
    await stack.redis.hset(hash, tenant, '9');
    await waitFor(async () => (await stack.redis.hget(hash, tenant)) === '3', { timeoutMs: 30_000, what: 'the stale copy (9) to be re-seeded to 3' });
    await stack.redis.hdel(hash, tenant);
    await waitFor(async () => (await stack.redis.hget(hash, tenant)) === '3', { timeoutMs: 30_000, what: 'the missing copy to be re-seeded' });
    worker.kill();
    await worker.exited;
  });
});

describe('an override where its setting is off (0)', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({ env: { MAX_RUNS_IN_FLIGHT_PER_TENANT: '0', RATE_LIMIT_PER_MINUTE: '0' } });
  }, LONG);
  afterAll(async () => stack?.stop());

  it('is stored, shown as not enforced, and does not apply: the setting turns the limit on, not the override', async () => {
    const tenant = newTenant();
    const operator = await stack.token({ tenantId: newTenant(), sub: 'ops', roles: [OPERATOR_ROLE] });
    const put = await api(stack, 'PUT', limitsPath(tenant), { token: operator, body: { max_active_runs: 1, max_runs_in_flight: 1 }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(put.status).toBe(200);
    expect(put.json.max_runs_in_flight).toEqual({ effective: 0, source: 'default', override: 1, default: 0, enforced: false });
    expect(put.json.max_active_runs).toEqual({ effective: 0, source: 'default', override: 1, default: 0, enforced: false });
    const token = await stack.token({ tenantId: tenant, sub: 'u' });
    for (let i = 0; i < 2; i++) expect((await submit(stack, token)).status).toBe(202);
  });
});
