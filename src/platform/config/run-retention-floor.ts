// No imports: config.ts reads this while the telemetry bootstrap loads, before OpenTelemetry's hooks
// are registered (importing it from durable-run.entity.ts loaded @mikro-orm/core that early).
/**
 * The least time an ended run is kept, whatever RUN_RETENTION says (ADR 0011, amendment "A floor under
 * retention"): the database's own bound on run retention, in the delete policy of durable-run.entity.ts, since the
 * application role can reach the system role (SET LOCAL ROLE) and write the recorded retention
 * (run_retention_decision, whose check holds it to 0 or at least this). A day: the default
 * IDEMPOTENCY_TTL, during which a replayed submission names its run; config refuses a shorter
 * RUN_RETENTION, and the retention pass applies no shorter one whatever its job or schedule carries.
 */
export const RUN_RETENTION_FLOOR_MS = 24 * 3_600_000;
