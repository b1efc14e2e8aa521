import { Migration } from '@mikro-orm/migrations';

/**
 * An endpoint's pending test events (ADR 0013, *Test events*): POST …/:id/test counts them (at most one
 * pending) in its insert. Without this index the count read the endpoint's whole delivery history
 * through (tenant, endpoint, created_at, id), or every pending delivery of the platform through the
 * pending index (a receiver down makes a backlog), filtering row by row. Partial: nearly always empty.
 */
export class Migration20261204021534_webhook_deliveries_pending_test_index extends Migration {

  override name = 'Migration20261204021534_webhook_deliveries_pending_test_index';

  override up(): void | Promise<void> {
    this.addSql(`create index "webhook_deliveries_pending_test_index" on "webhook_deliveries" ("tenant_id", "endpoint_id") where event_type = 'webhook.test' and status = 'pending';`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop index "webhook_deliveries_pending_test_index";`);
  }

}
