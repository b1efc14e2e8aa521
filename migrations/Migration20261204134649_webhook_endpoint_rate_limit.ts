import { Migration } from '@mikro-orm/migrations';

/**
 * An endpoint's `rate_limit_per_second` (ADR 0013, *Rate limits*): at most that many requests a second
 * to it, over every worker; null (every endpoint until set) is no limit. A nullable column without a
 * default rewrites nothing; the check (1-1000) is the API's range, so no row can hold what it refuses.
 */
export class Migration20261204134649_webhook_endpoint_rate_limit extends Migration {

  override name = 'Migration20261204134649_webhook_endpoint_rate_limit';

  override up(): void | Promise<void> {
    this.addSql(`alter table "webhook_endpoints" add "rate_limit_per_second" int null;`);
    this.addSql(`alter table "webhook_endpoints" add constraint "webhook_endpoints_rate_limit_per_second_check" check (rate_limit_per_second >= 1 and rate_limit_per_second <= 1000);`);
  }

  override down(): void | Promise<void> {
    this.addSql(`alter table "webhook_endpoints" drop constraint "webhook_endpoints_rate_limit_per_second_check";`);
    this.addSql(`alter table "webhook_endpoints" drop column "rate_limit_per_second";`);
  }

}
