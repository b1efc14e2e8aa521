import { Migration } from '@mikro-orm/migrations';

/**
 * A floor under webhook delivery retention (ADR 0011, amendment "A floor under retention"; ADR 0013): the
 * system role's delete policy on `webhook_deliveries` admits a settled (delivered or failed) delivery only
 * once its row has not moved for 24 hours (RUN_RETENTION_FLOOR_MS), as `durable_runs_system_retention` does
 * an ended run since Migration20261206081600_run_retention_floor. The application role can take the system
 * role (SET LOCAL ROLE): before, any of its statements could delete every tenant's settled deliveries, of
 * any age, the moment they settled. The retention pass already applied no retention under the floor to
 * deliveries (maintenance.ts), so no delivery it would delete is kept by this. Down restores the policy before.
 */
export class Migration20261206111000_webhook_delivery_retention_floor extends Migration {

  override name = 'Migration20261206111000_webhook_delivery_retention_floor';

  override up(): void | Promise<void> {
    this.addSql(`drop policy "webhook_deliveries_system_retention" on "webhook_deliveries";`);

    this.addSql(`create policy "webhook_deliveries_system_retention" on "webhook_deliveries" for delete to "dealix_system" using (((status = ANY (ARRAY['delivered'::text, 'failed'::text])) AND (updated_at < (now() - '24:00:00'::interval))));`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop policy "webhook_deliveries_system_retention" on "webhook_deliveries";`);

    this.addSql(`create policy "webhook_deliveries_system_retention" on "webhook_deliveries" for delete to "dealix_system" using ((status = ANY (ARRAY['delivered'::text, 'failed'::text])));`);
  }

}
