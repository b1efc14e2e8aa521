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
 * Stops after `maxBatches` (complete: false) or at the first batch smaller than `batchSize`.
 */
export async function deleteInBatches(
  systemEm: EntityManager,
  q: { table: string; where: string; params: unknown[]; group: string; batchSize: number; maxBatches: number },
): Promise<BatchDeletePass> {
  const pass: BatchDeletePass = { deleted: 0, byGroup: {}, batches: 0, complete: false };
  for (let i = 0; i < q.maxBatches; i++) {
    const rows = await systemEm.transactional((tx) =>
      tx.execute<{ group: string }[]>(
        `delete from ${q.table} where id in (select id from ${q.table} where ${q.where} limit ?) and ${q.where} returning ${q.group} as "group"`,
        [...q.params, q.batchSize, ...q.params],
        'all',
      ),
    );
    pass.batches++;
    pass.deleted += rows.length;
    for (const r of rows) pass.byGroup[r.group] = (pass.byGroup[r.group] ?? 0) + 1;
    if (rows.length < q.batchSize) {
      pass.complete = true;
      break;
    }
  }
  return pass;
}
