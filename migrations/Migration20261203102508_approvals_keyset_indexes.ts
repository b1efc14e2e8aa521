import { Migration } from '@mikro-orm/migrations';

/**
 * The approvals list pages by (created_at, id), newest first: both of its indexes end with the id, so a
 * page is read in index order without a sort. The new indexes are built before the old ones go, and
 * only if they are not there yet: on a large installation build them first by hand with CREATE INDEX
 * CONCURRENTLY (docs/runbook.md, Deploy).
 */
export class Migration20261203102508_approvals_keyset_indexes extends Migration {

  override name = 'Migration20261203102508_approvals_keyset_indexes';

  override up(): void | Promise<void> {
    this.addSql(`create index if not exists "approval_requests_tenant_status_created_index" on "approval_requests" ("tenant_id", "status", "created_at", "id");`);
    this.addSql(`create index if not exists "approval_requests_tenant_created_id_index" on "approval_requests" ("tenant_id", "created_at", "id");`);
    this.addSql(`drop index if exists "approval_requests_tenant_created_index";`);
    this.addSql(`drop index if exists "approval_requests_tenant_status_index";`);
  }

  override down(): void | Promise<void> {
    this.addSql(`create index if not exists "approval_requests_tenant_created_index" on "approval_requests" ("tenant_id", "created_at");`);
    this.addSql(`create index if not exists "approval_requests_tenant_status_index" on "approval_requests" ("tenant_id", "status", "created_at");`);
    this.addSql(`drop index if exists "approval_requests_tenant_status_created_index";`);
    this.addSql(`drop index if exists "approval_requests_tenant_created_id_index";`);
  }

}
