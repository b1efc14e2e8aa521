import { Migration } from '@mikro-orm/migrations';

/**
 * The platform operator's role on tenant_limits (ADR 0014): the NOLOGIN role `dealix_operator`, which the
 * operator routes take on by SET LOCAL ROLE, reads every tenant's row (the operator listing). Its write
 * privileges, and the application role's loss of INSERT, UPDATE and DELETE on the table, are grants:
 * `migrate` re-applies them after the migrations (roles.ts). The role must exist before this runs, created
 * by an administrator as the other roles are (migrations/bootstrap/roles.sql; the owner has no CREATEROLE).
 */

export class Migration20261204155914_tenant_limits_operator_role extends Migration {

  override name = 'Migration20261204155914_tenant_limits_operator_role';

  override up(): void | Promise<void> {
    this.addSql(`create policy "tenant_limits_operator_read" on "tenant_limits" for select to "dealix_operator" using (true);`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop policy "tenant_limits_operator_read" on "tenant_limits";`);
  }

}
