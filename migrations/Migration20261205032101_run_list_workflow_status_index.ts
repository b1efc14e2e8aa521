import { IndexReplacementMigration } from '../src/platform/db/concurrent-index.ts';

/**
 * Concurrently, outside a transaction: a plain `CREATE INDEX` on `durable_runs` holds off every write
 * of runs for as long as reading the table takes, and the `DROP INDEX` every read and write until the
 * migrations commit (docs/runbook.md, *Migrate*; concurrent-index.ts). The new index first: the runs
 * list is never left without one it can read in order.
 */
export class Migration20261205032101_run_list_workflow_status_index extends IndexReplacementMigration {

  override name = 'Migration20261205032101_run_list_workflow_status_index';

  protected override readonly build = { name: 'durable_runs_tenant_workflow_status_created_index', table: 'durable_runs', columns: 'tenant_id, workflow, status, created_at, id' };

  protected override readonly replaces = { name: 'durable_runs_tenant_created_index', table: 'durable_runs', columns: 'tenant_id, created_at, id' };

}
