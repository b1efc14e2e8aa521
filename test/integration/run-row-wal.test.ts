import { randomBytes, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Job } from 'bullmq';
import { CLASS_A_SUBMISSION, startStack } from '../helpers/stack.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { GOLDEN_PATH } from '../../src/modules/golden-path/golden-path.workflow.ts';
import { stepJobId } from '../../src/platform/queue/job-ids.ts';
import { runExecutor } from '../helpers/run-host.ts';
import type { StepJobData } from '../../src/platform/durable/runtime.ts';

/**
 * What a class A run writes to its run row, read exactly from PostgreSQL's WAL (`pg_walinspect`), not
 * timed: the counters of docs/performance-history.md (sessions 24 and 39). Per run, `durable_runs` costs one
 * insert, two updates (its first step, `pending → running`, and its end) and a row lock per step —
 * about a third of the run's WAL bytes. A step that leaves the run's status as it was writes its
 * checkpoint alone: no new version of the run row, no index entry, only the `for key share` lock its
 * guard and the checkpoint's foreign key need (ADR 0005, "the run row moves only with its status").
 *
 * The figures are pinned on purpose: an index added to `durable_runs`, or a statement that updates
 * the run row on a step that does not move its status, changes them; a deliberate change updates
 * them here and in docs/performance-history.md. WAL is cluster-wide (other sessions write it too): only the
 * records whose blocks are this test database's, grouped by transaction, are read, and each run's
 * transactions are told apart by what they write (the start inserts the run, each step a checkpoint).
 */
const stack = await startStack({ api: false });
afterAll(async () => stack.stop());

// The production executor, handed the run's job by this test (no worker: nothing else writes here).
const wf = stack.container.runtime.workflow(GOLDEN_PATH);
const { runtime, executor } = runExecutor(stack, wf, 'run-row-wal');
const queue = runtime.queues.get(wf.queue)!;

interface WalRecord { xid: string; rm: string; rt: string; rel: string }
/** One transaction's records on the run row (`durable_runs` and its indexes) and whether it wrote a checkpoint. */
interface TxRunWork { xid: string; inserts: number; confirms: number; updates: number; locks: number; indexEntries: number; checkpoint: boolean; other: string[] }

let dbOid = '';
const relNames = new Map<string, string>();

beforeAll(async () => {
  // A contrib module of PostgreSQL 15, installed by the superuser in this test's database only.
  await stack.db.admin('create extension if not exists pg_walinspect');
  dbOid = String((await stack.db.admin('select oid from pg_database where datname = current_database()')).rows[0].oid);
  const { rows } = await stack.db.admin(
    `select pg_relation_filenode(c.oid)::text as node, c.relname from pg_class c where c.relname like 'durable\\_runs%' or c.relname = 'durable_checkpoints'`,
  );
  for (const r of rows) if (r.node) relNames.set(r.node, r.relname);
});

/** A new class A run of a new tenant, started and carried through its four steps as a worker would (its first delivery). */
async function runOnce(): Promise<WalRecord[]> {
  const tenant = randomUUID();
  const hash = randomBytes(32).toString('hex');
  const from = (await stack.db.admin('select pg_current_wal_insert_lsn()::text as lsn')).rows[0].lsn;
  await runtime.start(tenantEm(stack.container.orm, tenant), GOLDEN_PATH, { tenantId: tenant, principal: 'producer', idempotencyHash: hash, input: CLASS_A_SUBMISSION, correlationId: randomUUID() });
  const job = (await queue.getJob(stepJobId(wf.tag, hash, 1, wf.steps[0]!.name))) as Job<StepJobData>;
  // Executed here, never by a worker of another test.
  await job.remove();
  expect(await executor.process(job)).toMatchObject({ status: 'ended', steps: wf.steps.map((s) => ({ step: s.name, replayed: false })) });
  // Every commit above was synchronous (flushed before it answered): the flush position is past them.
  const to = (await stack.db.admin('select pg_current_wal_flush_lsn()::text as lsn')).rows[0].lsn;
  const { rows } = await stack.db.admin(
    `select xid::text as xid, resource_manager as rm, record_type as rt, coalesce(substring(block_ref from 'rel \\d+/' || $3 || '/(\\d+)'), '') as node
       from pg_get_wal_records_info($1::pg_lsn, $2::pg_lsn)
      where block_ref like '%/' || $3 || '/%' order by start_lsn`,
    [from, to, dbOid],
  );
  return rows.map((r: { xid: string; rm: string; rt: string; node: string }) => ({ xid: r.xid, rm: r.rm, rt: r.rt, rel: relNames.get(r.node) ?? 'other' }));
}

/**
 * The records grouped by transaction, in the order each transaction first wrote. Index entries are
 * the B-tree records that add one (a leaf insert, or the split of a full leaf page that adds it);
 * `Heap2` records (pruning, visibility) are housekeeping PostgreSQL does when it finds the page so,
 * not a statement's work, and are not counted.
 */
function byTransaction(records: WalRecord[]): TxRunWork[] {
  const txs = new Map<string, TxRunWork>();
  for (const r of records) {
    if (r.xid === '0') continue;
    const tx = txs.get(r.xid) ?? { xid: r.xid, inserts: 0, confirms: 0, updates: 0, locks: 0, indexEntries: 0, checkpoint: false, other: [] };
    txs.set(r.xid, tx);
    if (r.rel === 'durable_checkpoints') {
      if (r.rm === 'Heap' && r.rt.startsWith('INSERT')) tx.checkpoint = true;
    } else if (r.rel === 'durable_runs' && r.rm === 'Heap') {
      if (r.rt.startsWith('INSERT')) tx.inserts++;
      else if (r.rt === 'HEAP_CONFIRM') tx.confirms++;
      else if (r.rt.startsWith('UPDATE') || r.rt.startsWith('HOT_UPDATE')) tx.updates++;
      else if (r.rt === 'LOCK') tx.locks++;
      else tx.other.push(r.rt);
    } else if (r.rel.startsWith('durable_runs_') && r.rm === 'Btree') {
      if (['INSERT_LEAF', 'INSERT_POST', 'SPLIT_L', 'SPLIT_R'].includes(r.rt)) tx.indexEntries++;
    }
  }
  return [...txs.values()];
}

/**
 * Measured up to three times: a WAL segment of the window recycled by a checkpoint of the shared
 * server before it was read fails the read (not the counts), and is measured again on a new run.
 */
async function measured(): Promise<TxRunWork[]> {
  for (let attempt = 0; ; attempt++) {
    try {
      return byTransaction(await runOnce());
    } catch (e) {
      if (attempt >= 2 || !/WAL|segment/i.test((e as Error).message)) throw e;
    }
  }
}

describe("a class A run's work on its run row, counted in the WAL", () => {
  it('one insert, two updates (first step and end), one lock per step, no version or index entry from steps 2 and 3', { timeout: 120_000 }, async () => {
    const txs = await measured();
    const start = txs.filter((t) => t.inserts > 0);
    const steps = txs.filter((t) => t.checkpoint);
    expect(start, JSON.stringify(txs)).toHaveLength(1);
    expect(steps, JSON.stringify(txs)).toHaveLength(wf.steps.length);
    const [s1, s2, s3, s4] = steps as [TxRunWork, TxRunWork, TxRunWork, TxRunWork];
    const shape = (t: TxRunWork) => ({ inserts: t.inserts, confirms: t.confirms, updates: t.updates, indexEntries: t.indexEntries, other: t.other });
    // The start: the run's row, and an entry in each of the seven indexes a pending run belongs to
    // (the id, (tenant_id, id), the idempotency hash, (status, updated_at, id), and the three partial
    // indexes of active and in-flight runs), and the confirmation of its speculative insertion (the
    // insert's `on conflict`: the idempotency of a start). No update: a run is inserted as it starts.
    expect(shape(start[0]!)).toEqual({ inserts: 1, confirms: 1, updates: 0, indexEntries: 7, other: [] });
    expect(start[0]!.locks).toBe(0);
    // Step 1 moves the run pending → running: one new version, never HOT (status is a key of
    // (status, updated_at, id) and the partial indexes' predicate), so seven index entries again.
    expect(shape(s1)).toEqual({ inserts: 0, confirms: 0, updates: 1, indexEntries: 7, other: [] });
    // Steps 2 and 3 leave the status as it was: their checkpoint alone, and the run row only locked
    // (`for key share`: the guard against a cancel, which the checkpoint's foreign key finds held).
    for (const s of [s2, s3]) {
      expect(shape(s)).toEqual({ inserts: 0, confirms: 0, updates: 0, indexEntries: 0, other: [] });
      expect(s.locks).toBe(1);
    }
    // Step 4 ends the run: one new version, in the five indexes an ended run belongs to.
    expect(shape(s4)).toEqual({ inserts: 0, confirms: 0, updates: 1, indexEntries: 5, other: [] });
    // A step that updates locks the version it updates first (the BEFORE UPDATE triggers' row fetch;
    // without them the foreign key's check would lock the new one: the same one record), and PostgreSQL
    // writes one more when the new version goes to another page.
    for (const s of [s1, s4]) {
      expect(s.locks).toBeGreaterThanOrEqual(1);
      expect(s.locks).toBeLessThanOrEqual(2);
    }
  });
});
