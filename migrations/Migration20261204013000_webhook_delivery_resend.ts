import { Migration } from '@mikro-orm/migrations';

/**
 * The admin's resend of a settled webhook delivery (ADR 0013): `resent_at` (its last resend; a pending
 * delivery with it set is owed exactly one attempt) and `resends` (how often it was resent). A nullable
 * column and one with a constant default rewrite nothing.
 */
export class Migration20261204013000_webhook_delivery_resend extends Migration {

  override name = 'Migration20261204013000_webhook_delivery_resend';

  override up(): void | Promise<void> {
    this.addSql(`alter table "webhook_deliveries" add "resent_at" timestamptz null, add "resends" int not null default 0;`);
  }

  override down(): void | Promise<void> {
    this.addSql(`alter table "webhook_deliveries" drop column "resent_at", drop column "resends";`);
  }

}
