import { Migration } from '@mikro-orm/migrations';

/**
 * A tenant's overrides (ADR 0014) within the operator API's ranges, as webhook_endpoints' rate limit is:
 * a row written past the API (by hand, by a bug) with 0 or less refused, or failed, every submission of
 * the tenant. The table holds one row per tenant with an override, all written by the API within these
 * ranges, so the validation is short and finds none outside them.
 */
export class Migration20261204144900_tenant_limits_checks extends Migration {

  override name = 'Migration20261204144900_tenant_limits_checks';

  override up(): void | Promise<void> {
    this.addSql(`alter table "tenant_limits" add constraint "tenant_limits_max_active_runs_check" check (max_active_runs >= 1 and max_active_runs <= 100000);`);
    this.addSql(`alter table "tenant_limits" add constraint "tenant_limits_max_runs_in_flight_check" check (max_runs_in_flight >= 1 and max_runs_in_flight <= 1000000);`);
  }

  override down(): void | Promise<void> {
    this.addSql(`alter table "tenant_limits" drop constraint "tenant_limits_max_active_runs_check";`);
    this.addSql(`alter table "tenant_limits" drop constraint "tenant_limits_max_runs_in_flight_check";`);
  }

}
