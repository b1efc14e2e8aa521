import type { EntityManager } from '@mikro-orm/postgresql';
import { deleteInBatches } from '../db/batch-delete.ts';
import { SETTLED_DELIVERY_SQL } from './webhook.entities.ts';

/**
 * The advisory lock of a tenant's webhook deliveries deleted in bulk (`tenant`: an SQL uuid expression),
 * the first lock both take: an endpoint's DELETE (its cascade) shared, a retention batch exclusive and
 * only if free (ADR 0013, *Updating and deleting an endpoint*). Without it each deleted the same rows
 * in its own order (the cascade by endpoint and creation, retention by last update), and two of them
 * could each hold a row the other waited for: PostgreSQL aborted one, and a DELETE answered 503.
 */
export const deliveriesLockKey = (tenant: string) => `hashtextextended('dealix:webhook_deliveries:' || (${tenant})::text, 0)`;

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
 * The database bounds it whatever it is asked: the role may delete only deliveries settled a day ago at
 * least (policy webhook_deliveries_system_retention, by an `updated_at` the application role cannot
 * backdate: the trigger updated_at_not_backdated), reads only their id, tenant, status, next attempt,
 * resends and last update, and reaches no endpoint. A pending delivery is never deleted, however old: it is an event
 * still owed to a receiver. A tenant one of whose endpoints is being deleted is passed over for the
 * batch (`deliveriesLockKey`): retention never waits for that delete, nor makes it wait but for a batch.
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
    // The rows of a tenant whose endpoint is being deleted are left (its cascade takes the endpoint's; the next pass the rest).
    lockKey: deliveriesLockKey('tenant_id'),
  });
  return { ...pass, byStatus: byGroup };
}
