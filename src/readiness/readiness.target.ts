import { fileURLToPath } from 'node:url';
import { apiConfigProblems, ConfigError, nodeTlsEnv, type Config } from '../platform/config/config.ts';
import { createOrm } from '../platform/db/orm.ts';
import { createContainer, type Container } from '../container.ts';
import { createApp } from '../app.ts';
import { entities } from '../entities.ts';
import { runReadiness, type ReadinessDeps } from './readiness.ts';
import { bullBoardInfo } from './bull-board.info.ts';
import { configRow, docsRows } from './settings.checks.ts';
import { fail, toReport, type ReadinessReport } from './readiness.types.ts';

export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface TargetOptions {
  docsRoot?: string;
}

/**
 * The live system as production builds it: the real container (createContainer) and the real Express
 * app (createApp), plus an owner-role ORM opened on demand. `close()` releases every connection.
 */
export async function openReadinessTarget(config: Config, opts: TargetOptions = {}): Promise<{ deps: ReadinessDeps; container: Container; close(): Promise<void> }> {
  // The probes' expected 401s are not worth a warning each: the tool's own container logs errors only.
  const container = await createContainer({ ...config, LOG_LEVEL: 'error' }, { service: 'tool' });
  const app = createApp(container);
  return {
    deps: {
      config,
      orm: container.orm,
      redis: container.redis,
      app,
      workflows: container.workflows,
      openOwnerOrm: () => createOrm(config, { entities, role: 'owner', poolMax: 1 }),
      bullBoard: bullBoardInfo(app),
      docsRoot: opts.docsRoot ?? REPO_ROOT,
      processEnv: nodeTlsEnv(),
    },
    container,
    close: () => container.close(),
  };
}

/** Loads the configuration, builds the live system and runs the matrix. An invalid configuration is a FAIL row, not a crash. */
export async function assessReadiness(loadConfig: () => Config, opts: TargetOptions = {}): Promise<ReadinessReport> {
  const docsRoot = opts.docsRoot ?? REPO_ROOT;
  let config: Config;
  try {
    config = loadConfig();
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    return toReport([configRow(e.problems), ...docsRows(docsRoot), fail('live-system', 'not inspected: the configuration is invalid')]);
  }
  let target: Awaited<ReturnType<typeof openReadinessTarget>>;
  try {
    target = await openReadinessTarget(config, { docsRoot });
  } catch (e) {
    // A setting checked once the workflows are known (WORKFLOW_VERSIONS_RETIRED): the config row, in the words the processes print,
    // with the API's own (apiConfigProblems, which runReadiness adds otherwise), as the API names them all at start.
    if (e instanceof ConfigError) return toReport([configRow([...e.problems, ...apiConfigProblems(config)]), ...docsRows(docsRoot), fail('live-system', 'not inspected: the configuration is invalid')]);
    return toReport([configRow(undefined, config), ...docsRows(docsRoot), fail('live-system', `could not build the container: ${(e as Error).message}`)]);
  }
  try {
    return await runReadiness(target.deps);
  } finally {
    await target.close();
  }
}
