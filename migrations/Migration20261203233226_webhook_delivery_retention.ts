import { Migration } from '@mikro-orm/migrations';

/**
 * Webhook delivery retention (ADR 0011, 0013): the system role may delete a settled delivery (delivered
 * or failed), never a pending one; its DELETE grant and its read of `updated_at` are applied by every
 * `db:migrate` (roles.ts). The partial index serves retention's cross-tenant sub-select (settled
 * deliveries by last update) without indexing the pending rows each run end inserts.
 */
export class Migration20261203233226_webhook_delivery_retention extends Migration {

  override name = 'Migration20261203233226_webhook_delivery_retention';

  override up(): void | Promise<void> {
    this.addSql(`create index "webhook_deliveries_settled_index" on "webhook_deliveries" ("updated_at") where status in ('delivered', 'failed');`);
    this.addSql(`create policy "webhook_deliveries_system_retention" on "webhook_deliveries" for delete to "dealix_system" using ((status = ANY (ARRAY['delivered'::text, 'failed'::text])));`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop policy "webhook_deliveries_system_retention" on "webhook_deliveries";`);

    this.addSql(`drop index "webhook_deliveries_settled_index";`);
  }

}
