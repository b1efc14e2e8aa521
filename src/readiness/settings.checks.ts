import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { JWKS_HTTPS_REMEDY, JWKS_OVER_HTTP_RISK, jwksOverPlainHttp, settingsWithPublishedDatabasePassword, SUPPORTED_TRACES_EXPORTERS, tracesExportersOf, usesPublishedJwtSecret, type Config } from '../platform/config/config.ts';
import { retryOf, type WorkflowDef } from '../platform/durable/workflow.ts';
import { formatRetention } from '../platform/queue/maintenance.ts';
import { TLS_VERIFICATION_OFF_RISK, TLS_VERIFICATION_REMEDY, tlsVerificationOff } from '../platform/process/tls-verification.ts';
import { fail, notRequired, pass, type ReadinessRow } from './readiness.types.ts';

/**
 * Telemetry is exporting somewhere, or was switched off on purpose; never silently half-configured. The
 * list is read as the OpenTelemetry SDK reads it (tracesExportersOf), which is what span-export.ts builds.
 */
export function telemetryRow(config: Config): ReadinessRow {
  if (config.OTEL_SDK_DISABLED) return pass('telemetry', 'disabled explicitly (OTEL_SDK_DISABLED=true)');
  const { exporters, mixed } = tracesExportersOf(config.OTEL_TRACES_EXPORTER);
  const endpoint = config.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ?? config.OTEL_EXPORTER_OTLP_ENDPOINT;
  // `none` beside another name is neither: the SDK reads it as OTLP alone, or (first) as nothing, and says so only in its diagnostics.
  if (mixed) {
    const read = exporters.length ? `OTLP alone (to ${endpoint ?? 'http://localhost:4318, the default'})` : 'nothing: no span is exported';
    return fail('telemetry', `OTEL_TRACES_EXPORTER "${config.OTEL_TRACES_EXPORTER}" puts "none" beside other names, which the OpenTelemetry SDK reads as ${read}; set "none" alone to turn export off, or leave it out`);
  }
  // A name the platform has no exporter for (a typo, `jaeger`, `zipkin`) exports nothing, and the process
  // can say so only through the SDK's diagnostics, which are off unless OTEL_LOG_LEVEL is set.
  const unsupported = exporters.find((e) => !SUPPORTED_TRACES_EXPORTERS.includes(e));
  if (unsupported) return fail('telemetry', `unsupported OTEL_TRACES_EXPORTER "${unsupported}" (${SUPPORTED_TRACES_EXPORTERS.join(', ')}): no span would be exported to it`);
  if (!exporters.length) return pass('telemetry', 'traces disabled explicitly (OTEL_TRACES_EXPORTER=none)');
  const where = [...(exporters.includes('otlp') && endpoint ? [`over OTLP to ${endpoint}`] : []), ...(exporters.includes('console') ? ['to the console'] : [])];
  if (!where.length) return fail('telemetry', 'neither configured nor disabled: set OTEL_EXPORTER_OTLP_ENDPOINT, or OTEL_SDK_DISABLED=true');
  return pass('telemetry', `exporting traces ${where.join(' and ')}`);
}

/** Tokens are verified with keys only the identity provider holds: a JWKS (over https in production), or a secret nobody else has seen. */
export function jwtKeysRow(config: Config): ReadinessRow {
  // The algorithms the list allows (the schema refuses a list of none the key source verifies; HS256 beside a JWKS verifies nothing).
  // And how long an API process rides out an identity provider it cannot reach on the keys it holds (ADR 0006, its amendment).
  if (config.JWT_JWKS_URL) {
    // Start-up refuses it in production too; the row says so of whatever configuration it is given.
    const plain = jwksOverPlainHttp(config.JWT_JWKS_URL);
    if (plain && config.NODE_ENV === 'production') return fail('jwt-keys', `JWT_JWKS_URL ${config.JWT_JWKS_URL} is not https: ${JWKS_OVER_HTTP_RISK}; ${JWKS_HTTPS_REMEDY}`);
    const stale = config.JWT_JWKS_MAX_STALE ? `kept up to ${formatRetention(config.JWT_JWKS_MAX_STALE)} past their age while it cannot be fetched` : 'none kept past their age (JWT_JWKS_MAX_STALE=0)';
    return pass('jwt-keys', `${config.JWT_ALGORITHMS.filter((a) => a !== 'HS256').join('/')} keys from ${config.JWT_JWKS_URL}${plain ? ' over plain http (refused in production)' : ''}; ${stale}`);
  }
  if (usesPublishedJwtSecret(config)) {
    return fail('jwt-keys', 'JWT_SECRET is the example published in .env.example / docker-compose.yml: anyone can sign a token for any tenant; set a secret of your own (e.g. openssl rand -hex 32) or JWT_JWKS_URL');
  }
  return pass('jwt-keys', `HS256 with a JWT_SECRET of its own (${config.JWT_SECRET?.length ?? 0} characters; development)`);
}

/**
 * The webhook SSRF guard is on: WEBHOOK_ALLOW_PRIVATE_NETWORKS=true lets any tenant admin point an
 * endpoint at loopback, private and link-local addresses. Required in production only.
 */
export function webhookSsrfGuardRow(config: Config): ReadinessRow {
  if (!config.WEBHOOK_ALLOW_PRIVATE_NETWORKS) return pass('webhook-ssrf-guard', 'webhook endpoints must resolve to public addresses only');
  const why = 'WEBHOOK_ALLOW_PRIVATE_NETWORKS=true: any tenant admin may point a webhook endpoint at loopback, private and link-local addresses (cloud metadata, internal services)';
  if (config.NODE_ENV === 'production') return fail('webhook-ssrf-guard', `${why}; unset it (false) in every API and worker`);
  return notRequired('webhook-ssrf-guard', why);
}

/**
 * TLS certificates are verified: NODE_TLS_REJECT_UNAUTHORIZED=0 in the environment of the process (not a
 * setting of the configuration: Node reads it itself) turns verification off for every TLS connection.
 * Required in production only; start-up only warns (tls-verification.ts).
 */
export function tlsVerificationRow(config: Config, env: NodeJS.ProcessEnv): ReadinessRow {
  if (!tlsVerificationOff(env)) {
    const other = env.NODE_TLS_REJECT_UNAUTHORIZED === undefined ? '' : ` (NODE_TLS_REJECT_UNAUTHORIZED=${JSON.stringify(env.NODE_TLS_REJECT_UNAUTHORIZED)} is not '0')`;
    return pass('tls-verification', `TLS certificates are verified${other}`);
  }
  if (config.NODE_ENV === 'production') return fail('tls-verification', `${TLS_VERIFICATION_OFF_RISK}; ${TLS_VERIFICATION_REMEDY}`);
  return notRequired('tls-verification', TLS_VERIFICATION_OFF_RISK);
}

/**
 * The database roles do not log in with the passwords this repository publishes (roles.sql,
 * .env.example, docker-compose.yml): anyone who reads them could connect as the owner, which bypasses
 * nothing but owns every table. Required in production only; the message names the settings, never a password.
 */
export function databaseCredentialsRow(config: Config): ReadinessRow {
  const published = settingsWithPublishedDatabasePassword(config);
  if (!published.length) return pass('database-credentials', 'no database URL uses a published password');
  const why = `${published.join(', ')} use${published.length === 1 ? 's' : ''} a password published in migrations/bootstrap/roles.sql (.env.example, docker-compose.yml)`;
  if (config.NODE_ENV === 'production') return fail('database-credentials', `${why}: anyone who has read this repository can log in as that role; set passwords of your own (ALTER ROLE … PASSWORD) and in the URLs`);
  return notRequired('database-credentials', why);
}

/**
 * Bounds that keep recovery fast and safe; see docs/governance/release-gates.md. `minStalledCount` is
 * `minStepCrashes`: STEP_MAX_CRASHES must lie between the two, and fewer stalls would leave it no value that passes.
 */
export const WORKER_BOUNDS = { lockMinMs: 1_000, lockMaxMs: 60_000, minStalledCount: 3, minStepCrashes: 3, attemptsMin: 1, attemptsMax: 25 } as const;

/**
 * Lock, stall and retry settings within sane bounds: a lock of 1–60 s (shorter renews too often,
 * longer delays recovery of a killed worker), a stalled check at least once per lock period, at least
 * three stalls before a job fails for good (a deploy may interrupt it once, and the crashes below must fit
 * under it), at least three crashes of one step before its run fails and no more than BullMQ's stalls
 * (ADR 0016), and 1–25 attempts per step.
 */
export function workerSettingsRow(config: Config, workflows: WorkflowDef[]): ReadinessRow {
  const b = WORKER_BOUNDS;
  const lock = config.WORKER_LOCK_DURATION;
  const problems: string[] = [];
  if (lock < b.lockMinMs || lock > b.lockMaxMs) problems.push(`WORKER_LOCK_DURATION ${lock} ms is outside ${b.lockMinMs}–${b.lockMaxMs} ms`);
  if (config.WORKER_STALLED_INTERVAL > lock) problems.push(`WORKER_STALLED_INTERVAL ${config.WORKER_STALLED_INTERVAL} ms exceeds the lock duration ${lock} ms`);
  if (config.WORKER_MAX_STALLED_COUNT < b.minStalledCount) problems.push(`WORKER_MAX_STALLED_COUNT ${config.WORKER_MAX_STALLED_COUNT} < ${b.minStalledCount}: an interrupted deploy or two fail the job, and no STEP_MAX_CRASHES fits (${b.minStepCrashes} at least, at most the stalls)`);
  if (config.STEP_MAX_CRASHES < b.minStepCrashes) problems.push(`STEP_MAX_CRASHES ${config.STEP_MAX_CRASHES} < ${b.minStepCrashes}: a run fails when a couple of worker crashes or SIGKILLs land on one step`);
  // Above it BullMQ fails the job for its stalls first, and the sweeper re-enqueues the run after SWEEPER_MIN_AGE:
  // still bounded, but slower, and the stall that failed the job is not counted (ADR 0016).
  if (config.STEP_MAX_CRASHES > config.WORKER_MAX_STALLED_COUNT) problems.push(`STEP_MAX_CRASHES ${config.STEP_MAX_CRASHES} > WORKER_MAX_STALLED_COUNT ${config.WORKER_MAX_STALLED_COUNT}: BullMQ fails a crash-looping job before the run is failed`);
  for (const wf of workflows) {
    for (const step of wf.steps) {
      const { attempts } = retryOf(step);
      if (!Number.isInteger(attempts) || attempts < b.attemptsMin || attempts > b.attemptsMax) {
        problems.push(`step ${wf.name}/${step.name} has ${attempts} attempts, outside ${b.attemptsMin}–${b.attemptsMax}`);
      }
    }
  }
  if (problems.length) return fail('worker-settings', problems.join('; '));
  const steps = workflows.reduce((n, wf) => n + wf.steps.length, 0);
  return pass('worker-settings', `lock ${lock} ms, stalled check ${config.WORKER_STALLED_INTERVAL} ms, max stalls ${config.WORKER_MAX_STALLED_COUNT}, max crashes per step ${config.STEP_MAX_CRASHES}, ${steps} steps with 1–25 attempts`);
}

/** Configuration parsed against the schema; `problems` are the schema's messages when it did not. */
export function configRow(problems: string[] | undefined, config?: Config): ReadinessRow {
  if (problems?.length) return fail('config', `invalid: ${problems.join('; ')}`);
  return pass('config', `valid (NODE_ENV=${config?.NODE_ENV ?? 'unknown'})`);
}

export const REQUIRED_DOCS = ['docs/governance/release-gates.md', 'docs/runbook.md'];

/** The release-gate description and the runbook exist and are not empty. */
export function docsRows(root: string): ReadinessRow[] {
  return REQUIRED_DOCS.map((doc) => {
    const path = join(root, doc);
    if (!existsSync(path)) return fail(`docs ${doc}`, `missing (${path})`);
    const size = statSync(path).size;
    return size > 0 ? pass(`docs ${doc}`, `present (${size} bytes)`) : fail(`docs ${doc}`, 'empty');
  });
}
