import { IndexReplacementMigration } from '../src/platform/db/concurrent-index.ts';

/**
 * The approvals list's indexes over every request, (tenant_id, created_at, id) and (tenant_id, status,
 * created_at, id), as two partial ones, pending requests and decided ones, and a partial (tenant_id, id)
 * for the lookups by id: over every request they were tenant-leading indexes that the statements naming
 * one request by id (a decision, its view, an SLA expiry) were planned onto on a table without
 * statistics (`id` tested entry by entry behind `created_at`: each walked the tenant's requests). Those
 * statements prove neither status predicate; they prove `id IS NOT NULL`, and the index built last wins
 * the planner's tie (approval.entities.ts). Concurrently, outside a transaction, as
 * Migration20261205093738_run_list_partial_status_indexes; every new index before the old ones are
 * dropped. The predicates as pg_get_indexdef prints them.
 */
export class Migration20261205095247_approval_list_partial_status_indexes extends IndexReplacementMigration {

  override name = 'Migration20261205095247_approval_list_partial_status_indexes';

  protected override readonly build = [
    {
      name: 'approval_requests_tenant_pending_index',
      table: 'approval_requests',
      columns: 'tenant_id, created_at, id',
      where: "(status = 'pending'::text)",
    },
    {
      name: 'approval_requests_tenant_decided_index',
      table: 'approval_requests',
      columns: 'tenant_id, status, created_at, id',
      where: "(status = ANY (ARRAY['approved'::text, 'rejected'::text, 'expired'::text, 'withdrawn'::text]))",
    },
    { name: 'approval_requests_tenant_id_id_index', table: 'approval_requests', columns: 'tenant_id, id', where: '(id IS NOT NULL)' },
  ];

  protected override readonly replaces = [
    { name: 'approval_requests_tenant_created_id_index', table: 'approval_requests', columns: 'tenant_id, created_at, id' },
    { name: 'approval_requests_tenant_status_created_index', table: 'approval_requests', columns: 'tenant_id, status, created_at, id' },
  ];

}
