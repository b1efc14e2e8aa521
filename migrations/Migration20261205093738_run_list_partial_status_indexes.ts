import { IndexReplacementMigration } from '../src/platform/db/concurrent-index.ts';

/**
 * The runs list's (tenant_id, workflow, status, created_at, id) index as two partial ones, ended runs
 * and active runs: over every run it was a tenant-leading index that the statements naming one run by
 * (tenant_id, id) could be planned onto on a table without statistics (`id` tested entry by entry
 * behind `workflow` and `status`: each step's statements walked the tenant's runs). Those statements
 * prove neither predicate (`status || ''`), so neither index can be planned for them. Concurrently,
 * outside a transaction, as Migration20261205032101_run_list_workflow_status_index; both new indexes
 * before the old one is dropped. The predicates as pg_get_indexdef prints them.
 */
export class Migration20261205093738_run_list_partial_status_indexes extends IndexReplacementMigration {

  override name = 'Migration20261205093738_run_list_partial_status_indexes';

  protected override readonly build = [
    {
      name: 'durable_runs_tenant_workflow_ended_index',
      table: 'durable_runs',
      columns: 'tenant_id, workflow, status, created_at, id',
      where: "(status = ANY (ARRAY['completed'::text, 'failed'::text, 'rejected'::text, 'approval_expired'::text, 'cancelled'::text]))",
    },
    {
      name: 'durable_runs_tenant_workflow_active_status_index',
      table: 'durable_runs',
      columns: 'tenant_id, workflow, status, created_at, id',
      where: "(status = ANY (ARRAY['pending'::text, 'running'::text, 'waiting'::text]))",
    },
  ];

  protected override readonly replaces = { name: 'durable_runs_tenant_workflow_status_created_index', table: 'durable_runs', columns: 'tenant_id, workflow, status, created_at, id' };

}
