import { Migration } from '@mikro-orm/migrations';

/**
 * An approval policy has a currency (its cost thresholds are in it; a run in another currency is
 * class C) and records the admin whose PUT set it. Existing policies were written for the default
 * currency, SAR (docs/golden-path.md), and by an admin this release did not record: they get `SAR`
 * and a null `updated_by`. A constant default and a nullable column: the table is not rewritten, and
 * its row-level security (forced) is untouched.
 */
export class Migration20261203161828_approval_policy_currency_updated_by extends Migration {

  override name = 'Migration20261203161828_approval_policy_currency_updated_by';

  override up(): void | Promise<void> {
    this.addSql(`alter table "approval_policies" add "currency" varchar(3) not null default 'SAR', add "updated_by" varchar(255) null;`);
  }

  override down(): void | Promise<void> {
    this.addSql(`alter table "approval_policies" drop column "currency", drop column "updated_by";`);
  }

}
