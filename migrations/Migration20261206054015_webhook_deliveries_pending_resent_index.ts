import { Migration } from '@mikro-orm/migrations';

/**
 * A tenant's deliveries pending because an admin resent them (ADR 0013, *Resending*): every resend counts
 * them against WEBHOOK_RESEND_MAX_PENDING (resend.ts), so that one tenant's bulk resends cannot fill the
 * shared webhook queue ahead of every other tenant's deliveries. Partial: only those resent and not yet
 * settled again, nearly always few.
 */
export class Migration20261206054015_webhook_deliveries_pending_resent_index extends Migration {

  override name = 'Migration20261206054015_webhook_deliveries_pending_resent_index';

  override up(): void | Promise<void> {
    this.addSql(`create index "webhook_deliveries_pending_resent_index" on "webhook_deliveries" ("tenant_id") where status = 'pending' and resends > 0;`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop index "webhook_deliveries_pending_resent_index";`);
  }

}
