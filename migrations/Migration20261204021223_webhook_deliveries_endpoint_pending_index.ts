import { Migration } from '@mikro-orm/migrations';

/**
 * An endpoint's pending deliveries in creation order: the deliveries list filtered on `pending`
 * (GET …/:id/deliveries?status=pending, deliveries.routes.ts) read them through (tenant, endpoint,
 * created_at, id) and filtered status row by row, walking the endpoint's settled history to fill a
 * page. Partial, as webhook_deliveries_failed_index is: pending deliveries are few (owed ones), and
 * settling takes one out; webhook_deliveries_pending_index (next_attempt_at) is the redelivery pass's,
 * cross-tenant, and serves no endpoint's list.
 */
export class Migration20261204021223_webhook_deliveries_endpoint_pending_index extends Migration {

  override name = 'Migration20261204021223_webhook_deliveries_endpoint_pending_index';

  override up(): void | Promise<void> {
    this.addSql(`create index "webhook_deliveries_endpoint_pending_index" on "webhook_deliveries" ("tenant_id", "endpoint_id", "created_at", "id") where status = 'pending';`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop index "webhook_deliveries_endpoint_pending_index";`);
  }

}
