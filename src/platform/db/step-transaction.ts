import type { EntityManager } from '@mikro-orm/postgresql';

/**
 * A step's transaction, as `em.transactional` runs one: on a fork of `em` with an identity map of its
 * own, begun with `em`'s session context (the tenant's `set_config`, coalescing-client.ts), flushed
 * and committed when `fn` resolves, rolled back when it or the commit rejects (a failing rollback
 * logged, never masking why). The fork keeps its transaction after it ended, as MikroORM's does: a step
 * still running after an abort cannot write outside it (kysely refuses a query on a transaction that
 * ended).
 *
 * What `em.transactional` adds and the executor never used is left out: the fork's own copy of the
 * event manager (no subscribers are registered), the fork bound as the AsyncLocalStorage context of
 * the global entity manager (nothing uses the global one: `allowGlobalContext` is off), and the
 * merge of the fork's entities into `em` after the commit (each step works on its own fork; steps
 * write with `insertRow`/`execute`). Measured in session 23 (docs/performance-history.md): the worker's CPU
 * per run, four of these per run.
 */
export async function stepTransaction<T>(em: EntityManager, fn: (tx: EntityManager) => Promise<T>): Promise<T> {
  const tx = em.fork({ clear: true });
  const connection = tx.getConnection('write');
  const trx = await connection.begin({ sessionContext: tx.getTransactionSessionContext() });
  tx.setTransactionContext(trx);
  try {
    const result = await fn(tx);
    await tx.flush();
    await connection.commit(trx);
    return result;
  } catch (e) {
    try {
      await connection.rollback(trx);
    } catch (rollbackError) {
      tx.config.getLogger().warn('query', `Failed to roll back transaction: ${(rollbackError as Error).message}`);
    }
    throw e;
  }
}
