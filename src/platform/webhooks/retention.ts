import type { EntityManager } from '@mikro-orm/postgresql';
import { deleteInBatches } from '../db/batch-delete.ts';
import { SETTLED_DELIVERY_SQL } from './webhook.entities.ts';

/** What one pass of delivery retention deleted. */
export interface DeliveryRetentionPass {
  deleted: number;
  /** Deliveries deleted by status (`delivered`, `failed`). */
  byStatus: Record<string, number>;
  batches: number;
  /** False when the pass stopped at `maxBatches` with more to delete: the next pass goes on. */
  complete: boolean;
}

/**
 * Deletes the webhook deliveries of every tenant that settled — delivered or failed, never pending —
 * more than `olderThanMs` ago (`updated_at`: a delivery's last write is its last attempt, or its
 * giving up), as the system role (`systemEm`, ADR 0011, 0013), in batches of `batchSize`, each its own
 * short transaction, like ended runs (durable/retention.ts).
 *
 * The database bounds it whatever it is asked: the role may delete only settled deliveries (policy
 * webhook_deliveries_system_retention), reads only their id, tenant, status, next attempt, resends and last
 * update, and reaches no endpoint. A pending delivery is never deleted, however old: it is an event
 * still owed to a receiver.
 */
export async function deleteSettledDeliveries(systemEm: EntityManager, opts: { olderThanMs: number; batchSize?: number; maxBatches?: number }): Promise<DeliveryRetentionPass> {
  if (!(opts.olderThanMs > 0)) throw new RangeError('deleteSettledDeliveries: olderThanMs must be positive');
  const { byGroup, ...pass } = await deleteInBatches(systemEm, {
    table: 'webhook_deliveries',
    // The statuses as literals, not a parameter: the planner proves the partial index's predicate from them.
    where: `${SETTLED_DELIVERY_SQL} and updated_at < now() - ?::float8 * interval '1 millisecond'`,
    params: [opts.olderThanMs],
    group: 'status',
    batchSize: opts.batchSize ?? 500,
    maxBatches: opts.maxBatches ?? 100,
  });
  return { ...pass, byStatus: byGroup };
}
