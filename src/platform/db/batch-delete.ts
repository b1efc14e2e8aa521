import type { EntityManager } from '@mikro-orm/postgresql';

/** What one pass of a batched retention delete did. */
export interface BatchDeletePass {
  /** Rows deleted. */
  deleted: number;
  /** Rows deleted by the value of the statement's `group` column. */
  byGroup: Record<string, number>;
  /** Transactions that deleted a batch (the last one may have found fewer than a batch, or none). */
  batches: number;
  /** False when the pass stopped at `maxBatches` with more to delete: the next pass goes on. */
  complete: boolean;
}

/**
 * Deletes the rows of `table` matching `where` (its `?` bound to `params`) in batches of `batchSize`,
 * each its own short transaction on `systemEm` (ADR 0011): `delete … where id in (select id … where
 * <where> limit n) and <where> returning <group>`. The condition is repeated outside the sub-select so
 * that a row changed after the statement's snapshot is checked again once its lock is had, and kept.
 * Stops after `maxBatches` (complete: false) or at the first batch that picked fewer than `batchSize`.
 * With `lockKey`, a batch that left rows whose key was held still goes on to the next (which picks
 * them again, beside rows further on): one tenant's delete in progress does not end the pass for every
 * other's rows. Only a batch that could delete none of the rows it picked ends the pass there (complete,
 * so no follow-up pass spins on them while that delete lasts): the next pass takes them.
 */
export async function deleteInBatches(
  systemEm: EntityManager,
  q: {
    table: string;
    where: string;
    params: unknown[];
    group: string;
    batchSize: number;
    maxBatches: number;
    /**
     * An advisory lock key (an SQL bigint over the table's columns) that whoever else deletes such rows
     * in bulk holds first: each batch takes the key of every row it picked (`pg_try_advisory_xact_lock`,
     * never waiting) and deletes only the rows whose key it got, leaving the others to the next pass. So
     * it never waits for such a delete's rows, nor it for the batch's while holding any: no deadlock.
     */
    lockKey?: string;
  },
): Promise<BatchDeletePass> {
  const pass: BatchDeletePass = { deleted: 0, byGroup: {}, batches: 0, complete: false };
  // Each batch: the rows' groups, and how many rows it picked (with `lockKey`, more than it deleted when a key was held).
  const sql = q.lockKey
    ? `with batch as (select id, ${q.lockKey} as lock_key from ${q.table} where ${q.where} limit ?),
            held as (select k from (select distinct lock_key as k from batch) keys where pg_try_advisory_xact_lock(k)),
            del as (delete from ${q.table} where id in (select id from batch where lock_key in (select k from held)) and ${q.where} returning ${q.group} as "group")
       select (select count(*) from batch)::int as picked, coalesce((select array_agg("group"::text) from del), '{}') as groups`
    : `with del as (delete from ${q.table} where id in (select id from ${q.table} where ${q.where} limit ?) and ${q.where} returning ${q.group} as "group")
       select (select count(*) from del)::int as picked, coalesce((select array_agg("group"::text) from del), '{}') as groups`;
  for (let i = 0; i < q.maxBatches; i++) {
    const [batch] = await systemEm.transactional((tx) => tx.execute<{ picked: number; groups: string[] }[]>(sql, [...q.params, q.batchSize, ...q.params], 'all'));
    const { picked, groups } = batch!;
    pass.batches++;
    pass.deleted += groups.length;
    for (const g of groups) pass.byGroup[g] = (pass.byGroup[g] ?? 0) + 1;
    if (picked < q.batchSize || groups.length === 0) {
      pass.complete = true;
      break;
    }
  }
  return pass;
}
