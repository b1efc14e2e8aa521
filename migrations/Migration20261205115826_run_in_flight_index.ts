import { IndexReplacementMigration } from '../src/platform/db/concurrent-index.ts';

/**
 * Admission's count of a tenant's runs in flight (`status in ('pending', 'running')`, on every
 * submission) read through `durable_runs_tenant_active_index`, (tenant_id, status) over every active
 * run, with `status` a filter (or through the runs list's index of active runs, `status` behind
 * `workflow`): each submission walked the tenant's waiting runs, which runs parked on a human approval
 * make many. Replaced by an index of the runs in flight only, its predicate the count's exactly, on the
 * runs list's columns (its pending and running branches, a bulk cancel of those statuses read it in
 * order). Concurrently, outside a transaction, as Migration20261205093738_run_list_partial_status_indexes;
 * the new index before the old one is dropped. The predicates as pg_get_indexdef prints them.
 */
export class Migration20261205115826_run_in_flight_index extends IndexReplacementMigration {

  override name = 'Migration20261205115826_run_in_flight_index';

  protected override readonly build = {
    name: 'durable_runs_tenant_workflow_in_flight_index',
    table: 'durable_runs',
    columns: 'tenant_id, workflow, status, created_at, id',
    where: "(status = ANY (ARRAY['pending'::text, 'running'::text]))",
  };

  protected override readonly replaces = {
    name: 'durable_runs_tenant_active_index',
    table: 'durable_runs',
    columns: 'tenant_id, status',
    where: "(status = ANY (ARRAY['pending'::text, 'running'::text, 'waiting'::text]))",
  };

}
