import { Migration } from '@mikro-orm/migrations';

/**
 * An endpoint's deliveries of one event type, newest first (ADR 0013, *Reading deliveries*): the list's
 * `event_type` filter. Without this index it walked the endpoint's history within the window through
 * (tenant, endpoint, created_at, id), or the table, discarding every other type row by row — all of it
 * for a type the endpoint rarely gets (`webhook.test`, `run.failed`).
 */
export class Migration20261204050401_webhook_deliveries_endpoint_event_type_index extends Migration {

  override name = 'Migration20261204050401_webhook_deliveries_endpoint_event_type_index';

  override up(): void | Promise<void> {
    this.addSql(`create index "webhook_deliveries_endpoint_event_type_index" on "webhook_deliveries" ("tenant_id", "endpoint_id", "event_type", "created_at", "id");`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop index "webhook_deliveries_endpoint_event_type_index";`);
  }

}
