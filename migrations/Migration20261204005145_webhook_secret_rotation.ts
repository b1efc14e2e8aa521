import { Migration } from '@mikro-orm/migrations';

/**
 * Signing-secret rotation with an overlap (ADR 0013): the secret a rotation replaced, and until when
 * (database clock) deliveries are signed with it beside the new one. Both null: no previous secret.
 */
export class Migration20261204005145_webhook_secret_rotation extends Migration {

  override name = 'Migration20261204005145_webhook_secret_rotation';

  override up(): void | Promise<void> {
    this.addSql(`alter table "webhook_endpoints" add "previous_secret" varchar(100) null, add "previous_secret_expires_at" timestamptz null;`);
  }

  override down(): void | Promise<void> {
    this.addSql(`alter table "webhook_endpoints" drop column "previous_secret", drop column "previous_secret_expires_at";`);
  }

}
