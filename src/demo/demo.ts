import { randomBytes } from 'node:crypto';
import { ConfigError, environmentWith, parseConfig, usesPublishedJwtSecret, type Config } from '../platform/config/config.ts';
import { choosePort, type DemoProcesses } from './demo-processes.ts';
import { checkNoWorkers, checkRedis, prepareDatabase } from './demo-setup.ts';
import { DemoError, say, until } from './demo-support.ts';
import { describeWebhook, runGoldenPathDemo } from './golden-path.demo.ts';
import { DemoWebhookReceiver } from './webhook-receiver.ts';

/**
 * npm run demo: the golden path end to end on the local services, as a new user sees it.
 * 1 database set up if needed · 2 Redis checked · 3 API and worker started as child processes ·
 * 4 a local webhook receiver registered as the tenant's endpoint · 5 a class B run submitted and
 * followed · 6 approved by a second user · 7 evidence verified · 8 the Bull Board address. The
 * webhooks the run sends are printed as they are verified. The caller (src/cli/demo.ts) stops the
 * children and sets the exit code.
 */
export interface DemoOptions {
  keepRunning: boolean;
  /** Resolves when the user asks to stop (--keep-running). */
  stopRequested: () => Promise<void>;
}

const START_TIMEOUT_MS = 60_000;

/** The environment of the demo and its children: a generated dev JWT secret and no OTel export unless configured. */
function demoEnvironment(): { env: Record<string, string>; config: Config; secretGenerated: boolean } {
  const generated = `demo-${randomBytes(24).toString('hex')}`;
  try {
    let env = environmentWith({ JWT_SECRET: generated });
    const config = parseConfig(env);
    // Without a collector the OTel SDK would only log export failures: off unless telemetry is configured.
    if (!config.OTEL_EXPORTER_OTLP_ENDPOINT && !config.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) env = environmentWith({ JWT_SECRET: generated, OTEL_SDK_DISABLED: 'true' });
    if (config.JWT_JWKS_URL) throw new DemoError('JWT_JWKS_URL is set: the demo signs development tokens with JWT_SECRET, which the API would not accept. Unset JWT_JWKS_URL for the demo.');
    // The children log at info at least, so their start-up lines can be awaited and shown on failure.
    const level = config.LOG_LEVEL === 'debug' || config.LOG_LEVEL === 'trace' ? config.LOG_LEVEL : 'info';
    return { env: { ...env, LOG_LEVEL: level }, config, secretGenerated: config.JWT_SECRET === generated };
  } catch (e) {
    if (e instanceof ConfigError) throw new DemoError(e.message);
    throw e;
  }
}

/**
 * The environment of the demo's API and worker: the demo's, with the port chosen, and
 * - the SSRF guard off: the demo's webhook receiver listens on 127.0.0.1, which the guard refuses
 *   (ADR 0013); off for these two children only, whatever .env says; .env.example keeps it on;
 * - the API on 127.0.0.1 only (API_HOST): with the guard off (and, with .env.example's JWT_SECRET, a
 *   published signing key) it must not be reachable from other machines, --keep-running included;
 * - the worker's metrics port, when WORKER_METRICS_PORT is set, on 127.0.0.1 only too
 *   (WORKER_METRICS_HOST): a local demo has no Prometheus on another machine to serve;
 * - the worker on every workflow queue: a WORKER_QUEUES from .env without golden-path would leave the
 *   demo's run to no one.
 */
export function demoChildEnvironment(env: Record<string, string>, port: number): Record<string, string> {
  const { WORKER_QUEUES: _servedByTheUsersWorkers, ...rest } = env;
  return { ...rest, PORT: String(port), API_HOST: DEMO_API_HOST, WORKER_METRICS_HOST: DEMO_API_HOST, WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true' };
}

/** Where the demo's API and its worker's metrics port listen (and the API's addresses printed): this machine only. */
export const DEMO_API_HOST = '127.0.0.1';

async function startChildren(procs: DemoProcesses, config: Config, env: Record<string, string>): Promise<{ base: string; port: number }> {
  const port = await choosePort(config.PORT);
  const childEnv = demoChildEnvironment(env, port);
  // A worker metrics port from .env that another process holds would stop the worker at start: moved, as PORT is.
  if (config.WORKER_METRICS_PORT) childEnv.WORKER_METRICS_PORT = String(await choosePort(config.WORKER_METRICS_PORT, 'the worker metrics'));
  const register = ['--import', './src/platform/telemetry/register.ts'];
  const api = procs.start('API', [...register, 'src/server.ts'], childEnv);
  const worker = procs.start('worker', [...register, 'workers/golden-path.worker.ts'], childEnv);
  const base = `http://${DEMO_API_HOST}:${port}`;
  await until(
    'the API to answer /readyz',
    START_TIMEOUT_MS,
    async () => {
      const res = await fetch(`${base}/readyz`, { signal: AbortSignal.timeout(3000) });
      if (res.status !== 200) throw new Error(`/readyz answered ${res.status}: ${(await res.text()).slice(0, 300)}`);
      return true;
    },
    procs.assertAlive,
  );
  say(`      API ready at ${base} (pid ${api.proc.pid}), listening on this machine only`);
  await until('the worker to start', START_TIMEOUT_MS, async () => (worker.saw('worker started') ? true : undefined), procs.assertAlive);
  say(`      worker started (pid ${worker.proc.pid})`);
  return { base, port };
}

/** Runs the demo; throws a DemoError naming what failed. Returns the shutdown grace the children deserve. */
export async function runDemo(procs: DemoProcesses, opts: DemoOptions): Promise<{ graceMs: number }> {
  const { env, config, secretGenerated } = demoEnvironment();
  say('Dealix demo: the golden path (partner tier-1 verification) end to end\n');
  await prepareDatabase(config);
  await checkRedis(config.REDIS_URL);
  await checkNoWorkers(config.REDIS_URL, config.QUEUE_PREFIX);
  say(`[3/8] Starting the API and a worker${secretGenerated ? ' (JWT_SECRET not configured: generated one for this demo)' : ''}`);
  say('      with WEBHOOK_ALLOW_PRIVATE_NETWORKS=true for these two only: the demo\'s webhook receiver is on 127.0.0.1,');
  say('      which the SSRF guard refuses otherwise (they log a warning; keep it false outside development)');
  if (usesPublishedJwtSecret(config)) {
    say('      warning: JWT_SECRET is the example published in .env.example: anyone who reaches this API can sign a token for any tenant.');
    say(`      The demo's API listens on ${DEMO_API_HOST} only; set your own secret in .env (openssl rand -hex 32) before an API is reachable from elsewhere.`);
  }
  const { base, port } = await startChildren(procs, config, env);
  const receiver = await DemoWebhookReceiver.start();
  let removeEndpoint: (() => Promise<string>) | undefined;
  try {
    const guard = () => {
      procs.assertAlive();
      receiver.assertVerified();
    };
    await runGoldenPathDemo({ config, base, secretGenerated, keepRunning: opts.keepRunning, receiver, guard, onEndpoint: (remove) => (removeEndpoint = remove) });
    if (opts.keepRunning) {
      receiver.onWebhook = (w) => say(`      ${describeWebhook(w)}`);
      say(`\nThe API (http://${DEMO_API_HOST}:${port}, this machine only) and the worker keep running, and the demo's tenant's webhooks are printed as they arrive; press Ctrl-C to stop them.`);
      await opts.stopRequested();
    }
    // Its receiver stops with the demo: nothing may be left to deliver to it (a later worker on this database would try for a day).
    const remove = removeEndpoint;
    removeEndpoint = undefined;
    if (remove) say(`\nDeleted the demo's webhook endpoint ${await remove()} and its deliveries: its receiver stops with the demo.`);
  } finally {
    // The demo failed: deleted if the API still answers, as best it can (the failure is what is reported).
    await removeEndpoint?.().catch(() => undefined);
    await receiver.close();
  }
  return { graceMs: config.WORKER_SHUTDOWN_GRACE + 10_000 };
}
