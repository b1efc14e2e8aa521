import { Migration } from '@mikro-orm/migrations';
import { replaceIndexConcurrently, type IndexSpec } from '../src/platform/db/concurrent-index.ts';

/**
 * A tenant's deliveries pending because an admin resent them (ADR 0013, *Resending*): every resend counts
 * them against WEBHOOK_RESEND_MAX_PENDING (resend.ts), so that one tenant's bulk resends cannot fill the
 * shared webhook queue ahead of every other tenant's deliveries. Partial: only those resent and not yet
 * settled again, nearly always few. Built concurrently, outside a transaction (migrator.ts runs it
 * alone): webhook_deliveries takes every run end's inserts, which a plain CREATE INDEX would hold off.
 * The predicate as pg_get_indexdef prints it.
 */
const INDEX: IndexSpec = {
  name: 'webhook_deliveries_pending_resent_index',
  table: 'webhook_deliveries',
  columns: 'tenant_id',
  where: "((status = 'pending'::text) AND (resends > 0))",
};

export class Migration20261206061500_webhook_deliveries_pending_resent_index extends Migration {

  override name = 'Migration20261206061500_webhook_deliveries_pending_resent_index';

  override isTransactional(): boolean {
    return false;
  }

  override async up(): Promise<void> {
    await replaceIndexConcurrently(this.config.get('clientUrl')!, INDEX);
  }

  override async down(): Promise<void> {
    await replaceIndexConcurrently(this.config.get('clientUrl')!, [], INDEX.name);
  }

}
