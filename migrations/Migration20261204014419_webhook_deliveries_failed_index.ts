import { Migration } from '@mikro-orm/migrations';

/**
 * An endpoint's failed deliveries in creation order (ADR 0013, *Resending*): the bulk resend's default
 * (`status: ['failed']`) over a window read them through (tenant, endpoint, created_at, id) and filtered
 * status row by row, walking every delivered delivery of the window (most of an endpoint's history)
 * twice, for the batch and for has_more. Partial: failed deliveries are few, and a resend makes one
 * pending (out of the index) again.
 *
 * The snapshot written with it also records `resent_at` and `resends` (added by the hand-written
 * Migration20261204013000_webhook_delivery_resend, which left the snapshot behind): without that, the
 * next generated migration would add those columns a second time.
 */
export class Migration20261204014419_webhook_deliveries_failed_index extends Migration {

  override name = 'Migration20261204014419_webhook_deliveries_failed_index';

  override up(): void | Promise<void> {
    this.addSql(`create index "webhook_deliveries_failed_index" on "webhook_deliveries" ("tenant_id", "endpoint_id", "created_at", "id") where status = 'failed';`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop index "webhook_deliveries_failed_index";`);
  }

}
