// No imports: config.ts reads this while the telemetry bootstrap loads, before OpenTelemetry's hooks
// are registered (importing it from durable-run.entity.ts loaded @mikro-orm/core that early).
/**
 * The least time an ended run, and a settled webhook delivery, is kept whatever RUN_RETENTION says (ADR
 * 0011, amendment "A floor under retention"): the database's own bound on retention, in the delete
 * policies of durable-run.entity.ts and webhook.entities.ts, since the application role can reach the
 * system role (SET LOCAL ROLE) and write the recorded retention (run_retention_decision, whose check
 * holds it to 0 or at least this). A day: the default IDEMPOTENCY_TTL, during which a replayed
 * submission names its run; config refuses a shorter RUN_RETENTION, and the retention pass applies no
 * shorter one, to runs and deliveries alike, whatever its job or schedule carries.
 */
export const RUN_RETENTION_FLOOR_MS = 24 * 3_600_000;

/**
 * A row that last moved (`updated_at`) longer ago than the floor, as PostgreSQL prints it back from
 * pg_policies (so the schema diff is empty): the age condition of both delete policies retention relies on,
 * `durable_runs_system_retention` and `webhook_deliveries_system_retention`. `updated_at` is the database's
 * time of the row's last move, whatever the application role writes (the tables' `updated_at_not_backdated`
 * triggers, tenant-owned.ts; ADR 0011, amendment "The floor's clock is the database's").
 */
export const PAST_RETENTION_FLOOR_SQL = `(updated_at < (now() - '${RUN_RETENTION_FLOOR_MS / 3_600_000}:00:00'::interval))`;
