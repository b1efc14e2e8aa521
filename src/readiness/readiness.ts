import type { Express } from 'express';
import type { Redis } from 'ioredis';
import { apiConfigProblems, type Config } from '../platform/config/config.ts';
import type { MikroORM } from '../platform/db/orm.ts';
import type { WorkflowDef } from '../platform/durable/workflow.ts';
import { autovacuumRow, autovacuumSetting, databaseRows } from './database.checks.ts';
import { migrationRows } from './migrations.checks.ts';
import { routeTable } from './route-table.ts';
import { authenticationRow, idempotencyRow, withProbe } from './http.checks.ts';
import { bullBoardAuthRow, bullBoardQueuesRow, type BullBoardInfo } from './bull-board.checks.ts';
import { redisRows } from './redis.checks.ts';
import { liveConnectionBudgetRow } from './connection-budget.checks.ts';
import { configRow, databaseCredentialsRow, docsRows, jwtKeysRow, telemetryRow, tlsVerificationRow, webhookSsrfGuardRow, workerSettingsRow } from './settings.checks.ts';
import { workflowVersionsRow } from './workflow-versions.checks.ts';
import { acceptanceOf, fail, toReport, type ReadinessReport, type ReadinessRow } from './readiness.types.ts';

/** Everything the matrix inspects. Production wiring: readiness.target.ts; tests point pieces at throwaway things. */
export interface ReadinessDeps {
  config: Config;
  /** The live application-role ORM (the container's): catalog reads run as the role the app really uses. */
  orm: MikroORM;
  redis: Redis;
  /** The live Express app (createApp): its router stack is read and probed over loopback. */
  app: Express;
  workflows: WorkflowDef[];
  /** Opens an owner-role ORM (MIGRATION_DATABASE_URL) for the migration and drift rows; closed after use. */
  openOwnerOrm(): Promise<MikroORM>;
  bullBoard: BullBoardInfo | undefined;
  /** The NOLOGIN maintenance role (default dealix_system); tests point it at a throwaway role. */
  systemRole?: string;
  /** Directory holding docs/ (the repository root). */
  docsRoot: string;
  /** The variables Node itself reads (NODE_TLS_REJECT_UNAUTHORIZED), from this process's environment (nodeTlsEnv); tests pass their own. */
  processEnv: NodeJS.ProcessEnv;
}

/** A group of rows that could not be computed becomes one FAIL row naming the error, never a crash. */
async function guarded(component: string, fn: () => Promise<ReadinessRow[]>): Promise<ReadinessRow[]> {
  try {
    return await fn();
  } catch (e) {
    return [fail(component, `check failed: ${(e as Error).message}`)];
  }
}

/**
 * The release readiness matrix: one row per component of the live system, PASS or FAIL with the reason
 * (N/A: a production requirement outside production; ACCEPTED: a value it cannot read, verified by the operator).
 */
export async function runReadiness(deps: ReadinessDeps): Promise<ReadinessReport> {
  const { config, app, workflows, bullBoard } = deps;
  // The API's own settings too (apiConfigProblems): the matrix judges the API as production builds it, which refuses to start on them.
  const rows: ReadinessRow[] = [configRow(apiConfigProblems(config), config), ...docsRows(deps.docsRoot)];
  rows.push(...(await guarded('database', () => databaseRows(deps.orm, { systemRole: deps.systemRole }))));
  rows.push(...(await guarded('postgres-autovacuum', async () => [autovacuumRow(await autovacuumSetting(deps.orm), { production: config.NODE_ENV === 'production' })])));
  rows.push(...(await guarded('migrations', () => migrationRows(deps.openOwnerOrm))));
  rows.push(
    ...(await guarded('routes', async () => {
      const endpoints = routeTable(app);
      return withProbe(app, async (probe) => [
        idempotencyRow(endpoints),
        await authenticationRow(endpoints, probe, bullBoard ? [bullBoard.basePath] : []),
        await bullBoardAuthRow(bullBoard, endpoints, probe),
      ]);
    })),
  );
  rows.push(bullBoardQueuesRow(bullBoard, workflows.map((w) => w.queue)));
  rows.push(telemetryRow(config));
  rows.push(jwtKeysRow(config));
  rows.push(webhookSsrfGuardRow(config));
  rows.push(databaseCredentialsRow(config));
  rows.push(tlsVerificationRow(config, deps.processEnv));
  rows.push(...(await guarded('redis', () => redisRows(deps.redis, { production: config.NODE_ENV === 'production', acceptance: acceptanceOf(config) }))));
  // After the Redis rows (whose check waits for the connection to be ready): the live processes' pools against max_connections.
  rows.push(...(await guarded('connection-budget', async () => [await liveConnectionBudgetRow(deps.orm, deps.redis, config.QUEUE_PREFIX)])));
  rows.push(workerSettingsRow(config, workflows));
  rows.push(...(await guarded('workflow-versions', async () => [await workflowVersionsRow(deps.orm, workflows)])));
  return toReport(rows);
}
