/**
 * The sweeper's cross-tenant read (`list_incomplete`) pages through incomplete runs by (updated_at, id),
 * and a sweep goes on from where the last stopped (its cursor in the middle of the table). On
 * (status, updated_at) alone every page read every incomplete run of its statuses after the cursor,
 * fetched each row and sorted them for the 500 it returns: with 300,000 waiting runs ~1 s a page on a
 * 2-vCPU machine, a sweep of 20,000 (40 pages) past SWEEPER_INTERVAL, so the sweeps of several workers
 * overlapped (the sweep lock lapses after one interval). Each page must read about the rows it returns.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStack, type TestStack } from '../helpers/stack.ts';
import { systemEm } from '../../src/platform/db/tenant-em.ts';
import { CoalescingClient } from '../../src/platform/db/coalescing-client.ts';
import { inlineStatement } from '../../src/platform/db/statement-batch.ts';
import type { RunStatus } from '../../src/platform/durable/durable-run.entity.ts';

const LONG = 180_000;
const LIMIT = 200;

type PlanNode = { 'Node Type': string; 'Actual Rows'?: number; 'Rows Removed by Filter'?: number; Plans?: PlanNode[] };
const planNodes = (n: PlanNode): PlanNode[] => [n, ...(n.Plans ?? []).flatMap(planNodes)];

describe("the sweeper's paged read of incomplete runs", () => {
  let stack: TestStack;
  const originalQuery = CoalescingClient.prototype.query;
  beforeAll(async () => {
    stack = await startStack({ api: false });
  }, LONG);
  afterAll(async () => {
    CoalescingClient.prototype.query = originalQuery;
    await stack?.stop();
  });

  it('a page after a cursor reads only about the rows it returns (no sort of every run behind it), and paging in ties misses and repeats none', { timeout: LONG }, async () => {
    // 40,000 runs of many tenants, 100 sharing each updated_at (ties broken by id): 12,000 waiting, 4,000
    // pending, 8,000 running, the rest ended.
    await stack.db.admin(
      `insert into durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, correlation_id, sequence_num, step_count, created_at, updated_at)
       select gen_random_uuid(), gen_random_uuid(), 'golden-path', 1, md5(g::text),
              case when g % 10 < 3 then 'waiting' when g % 10 = 3 then 'pending' when g % 10 < 6 then 'running' else 'completed' end,
              'u', '{}', 'c', 0, 4, now() - interval '30 days', now() - interval '30 days' + (g / 100) * interval '1 second'
         from generate_series(1, 40000) g`,
    );
    await stack.db.admin('analyze durable_runs');
    const { orm, runtime } = stack.container;
    const list = (statuses: RunStatus[], after?: { updatedAt: string; id: string }, limit = LIMIT) =>
      runtime.list_incomplete(systemEm(orm), { olderThanMs: 10_000, limit, statuses, ...(after ? { after } : {}) });

    // Paged through to the end, in ties: every run once, in (updated_at, id) order.
    for (const [statuses, count] of [[['waiting'], 12_000], [['pending', 'running'], 12_000]] as [RunStatus[], number][]) {
      const seen: string[] = [];
      let after: { updatedAt: string; id: string } | undefined;
      for (;;) {
        const page = await list(statuses, after, 1000);
        seen.push(...page.map((r) => r.id));
        const last = page.at(-1);
        if (page.length < 1000 || !last) break;
        after = { updatedAt: last.updated_at_exact, id: last.id };
      }
      const { rows } = await stack.db.admin(`select id from durable_runs where status = any($1::text[]) order by updated_at, id`, [statuses]);
      expect(seen.length).toBe(count);
      expect(seen).toEqual(rows.map((r: { id: string }) => r.id));
    }

    // The statements a page sends, from a cursor half way, planned and run as sent.
    const cursor = (await stack.db.admin(
      `select updated_at::text as "updatedAt", id from durable_runs where status = 'waiting' order by updated_at, id offset 6000 limit 1`,
    )).rows[0] as { updatedAt: string; id: string };
    const sent: { text: string; values: unknown[] }[] = [];
    CoalescingClient.prototype.query = function (this: CoalescingClient, config: any, values?: any, callback?: any) {
      if (typeof config === 'string' && /from durable_runs\s+where status/.test(config) && Array.isArray(values)) sent.push({ text: config, values });
      return originalQuery.call(this, config, values, callback);
    };
    try {
      await list(['waiting'], cursor);
      await list(['pending', 'running'], cursor);
    } finally {
      CoalescingClient.prototype.query = originalQuery;
    }
    expect(sent).toHaveLength(2);
    for (const [i, s] of sent.entries()) {
      const plan = (await stack.db.admin(`explain (analyze, format json) ${inlineStatement(s)}`)).rows[0]['QUERY PLAN'][0].Plan as PlanNode;
      const nodes = planNodes(plan);
      const scans = nodes.filter((n) => /Scan/.test(n['Node Type']));
      const read = scans.reduce((n, node) => n + (node['Actual Rows'] ?? 0) + (node['Rows Removed by Filter'] ?? 0), 0);
      const statuses = i === 0 ? 1 : 2;
      expect({ page: i, sorted: nodes.some((n) => n['Node Type'] === 'Sort'), readAtMost: read <= statuses * LIMIT }).toEqual({ page: i, sorted: false, readAtMost: true });
    }
  });
});
