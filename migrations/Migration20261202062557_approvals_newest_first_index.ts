import { Migration } from '@mikro-orm/migrations';

export class Migration20261202062557_approvals_newest_first_index extends Migration {

  override name = 'Migration20261202062557_approvals_newest_first_index';

  override up(): void | Promise<void> {
    this.addSql(`create index if not exists "approval_requests_tenant_created_index" on "approval_requests" ("tenant_id", "created_at");`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop index "approval_requests_tenant_created_index";`);
  }

}
