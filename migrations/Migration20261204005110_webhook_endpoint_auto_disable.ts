import { Migration } from '@mikro-orm/migrations';

/**
 * Automatic disabling of a failing webhook endpoint (ADR 0013): `failing_since` (its first failed
 * attempt since its last 2xx) and `disabled_reason` (`manual` or `failing`). Endpoints disabled before
 * this migration were disabled by an admin: they are backfilled `manual`. Adding nullable columns
 * without a default rewrites nothing.
 */
export class Migration20261204005110_webhook_endpoint_auto_disable extends Migration {

  override name = 'Migration20261204005110_webhook_endpoint_auto_disable';

  override up(): void | Promise<void> {
    this.addSql(`alter table "webhook_endpoints" add "disabled_reason" text null, add "failing_since" timestamptz null;`);
    this.addSql(`alter table "webhook_endpoints" add constraint "webhook_endpoints_disabled_reason_check" check ("disabled_reason" in ('manual', 'failing'));`);
    this.addSql(`update "webhook_endpoints" set "disabled_reason" = 'manual' where not "enabled";`);
  }

  override down(): void | Promise<void> {
    this.addSql(`alter table "webhook_endpoints" drop constraint "webhook_endpoints_disabled_reason_check";`);
    this.addSql(`alter table "webhook_endpoints" drop column "disabled_reason", drop column "failing_since";`);
  }

}
