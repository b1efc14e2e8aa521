import { Migration } from '@mikro-orm/migrations';

/**
 * A floor under run retention (ADR 0011, amendment "A floor under retention"): the system role's delete
 * policy on `durable_runs` admits an ended run only once its row has not moved for 24 hours
 * (RUN_RETENTION_FLOOR_MS), and the recorded decision (`run_retention_decision`) is 0 (off) or at least
 * that. The application role can take the system role (SET LOCAL ROLE) and writes the decision: before,
 * any of its statements could delete every tenant's ended runs, with their completed checkpoints, the
 * moment they ended, or record a retention of a millisecond that every worker's pass then applied.
 * A decision recorded under the floor (RUN_RETENTION under 24 h, which config allowed with a short
 * IDEMPOTENCY_TTL) is raised to it first; the pass would apply the floor anyway. Down restores the policy
 * and the check before.
 */
export class Migration20261206081600_run_retention_floor extends Migration {

  override name = 'Migration20261206081600_run_retention_floor';

  override up(): void | Promise<void> {
    this.addSql(`drop policy "durable_runs_system_retention" on "durable_runs";`);

    this.addSql(`create policy "durable_runs_system_retention" on "durable_runs" for delete to "dealix_system" using (((status = ANY (ARRAY['completed'::text, 'failed'::text, 'rejected'::text, 'approval_expired'::text, 'cancelled'::text])) AND (updated_at < (now() - '24:00:00'::interval))));`);

    this.addSql(`update "run_retention_decision" set retention_ms = 86400000 where retention_ms > 0 and retention_ms < 86400000;`);
    this.addSql(`alter table "run_retention_decision" drop constraint "run_retention_decision_retention_ms_check";`);
    this.addSql(`alter table "run_retention_decision" add constraint "run_retention_decision_retention_ms_check" check (retention_ms = 0 or retention_ms >= 86400000);`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop policy "durable_runs_system_retention" on "durable_runs";`);

    this.addSql(`create policy "durable_runs_system_retention" on "durable_runs" for delete to "dealix_system" using ((status = ANY (ARRAY['completed'::text, 'failed'::text, 'rejected'::text, 'approval_expired'::text, 'cancelled'::text])));`);

    this.addSql(`alter table "run_retention_decision" drop constraint "run_retention_decision_retention_ms_check";`);
    this.addSql(`alter table "run_retention_decision" add constraint "run_retention_decision_retention_ms_check" check (retention_ms >= 0);`);
  }

}
