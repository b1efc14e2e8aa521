import { IndexReplacementMigration } from '../src/platform/db/concurrent-index.ts';

/**
 * Concurrently, outside a transaction, as Migration20261205032101_run_list_workflow_status_index. The
 * new index first: run retention's read of ended runs by age is never left without one.
 */
export class Migration20261205042755_sweeper_pages_status_updated_id_index extends IndexReplacementMigration {

  override name = 'Migration20261205042755_sweeper_pages_status_updated_id_index';

  protected override readonly build = { name: 'durable_runs_status_updated_id_index', table: 'durable_runs', columns: 'status, updated_at, id' };

  protected override readonly replaces = { name: 'durable_runs_status_updated_index', table: 'durable_runs', columns: 'status, updated_at' };

}
