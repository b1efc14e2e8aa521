/**
 * npm run demo [-- --keep-running]: the golden path end to end on the local PostgreSQL and Redis, as
 * a new user sees it. Sets up the database when needed, starts the API and one worker as child
 * processes, submits a class B run with a development token, follows it, approves it as a second
 * user, verifies the evidence hash, prints where Bull Board lives, and shuts everything down.
 * Exits 0 on success; on any failure it names what went wrong, prints the children's logs and exits 1.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { Redis } from 'ioredis';
import { ConfigError, describePgUrl, environmentWith, parseConfig, type Config } from '../platform/config/config.ts';
import { setupDatabase } from '../platform/db/roles.ts';
import { migrate } from '../platform/db/migrate.ts';
import { signDevToken } from '../platform/tenancy/jwt.ts';
import { entities } from '../entities.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const DEFAULT_ADMIN_URL = 'postgres://postgres@127.0.0.1:5432/postgres';
const SUBMISSION = {
  partner: { name: 'Acme Trading', country: 'SA', sector: 'logistics', website: 'https://acme.example', registration_number: '1010101010' },
  economics: { expected_deals_per_year: 12, average_deal_value: 250000, win_rate: 0.3, gross_margin: 0.35, onboarding_cost: 40000, enablement_cost: 15000, annual_support_cost: 10000 },
  currency: 'SAR',
};

class DemoError extends Error {}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const say = (line = '') => console.log(line);
const fmt = (n: number) => n.toLocaleString('en-US', { maximumFractionDigits: 2 });
const safeUrl = (url: string) => url.replace(/\/\/([^:@/]+):[^@/]*@/, '//$1@');

/** A child process of the demo; its output is kept (the last lines) to print on failure. */
class Child {
  readonly name: string;
  readonly proc: ChildProcess;
  readonly exited: Promise<number | null>;
  private readonly lines: string[] = [];
  constructor(name: string, args: string[], env: Record<string, string>) {
    this.name = name;
    // Own process group: a Ctrl-C in the terminal reaches the demo only, which then stops the children once, cleanly.
    this.proc = spawn(process.execPath, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    const keep = (d: Buffer) => {
      for (const l of d.toString('utf8').split('\n')) if (l.trim()) this.lines.push(l.length > 600 ? `${l.slice(0, 600)}…` : l);
      if (this.lines.length > 400) this.lines.splice(0, this.lines.length - 400);
    };
    this.proc.stdout!.on('data', keep);
    this.proc.stderr!.on('data', keep);
    this.exited = new Promise((r) => this.proc.once('exit', (code, signal) => r(code ?? (signal ? 128 : null))));
  }
  get alive() {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }
  saw(text: string) {
    return this.lines.some((l) => l.includes(text));
  }
  tail(n: number) {
    return this.lines.slice(-n);
  }
  /** SIGTERM (a clean shutdown), then SIGKILL after `graceMs`. */
  async stop(graceMs: number): Promise<number | null> {
    if (!this.alive) return this.proc.exitCode;
    this.proc.kill('SIGTERM');
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), graceMs);
    const code = await this.exited;
    clearTimeout(timer);
    return code;
  }
}

const children: Child[] = [];

async function until<T>(what: string, timeoutMs: number, fn: () => Promise<T | undefined>, intervalMs = 200): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    for (const c of children) if (!c.alive) throw new DemoError(`the ${c.name} exited (code ${c.proc.exitCode ?? c.proc.signalCode}) while waiting for ${what}`);
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (e) {
      last = (e as Error).message;
    }
    if (Date.now() > deadline) throw new DemoError(`timed out after ${Math.round(timeoutMs / 1000)} s waiting for ${what}${last ? ` (last error: ${last})` : ''}`);
    await sleep(intervalMs);
  }
}

/** Connects and disconnects; false when the role or database is missing, an error when PostgreSQL is unreachable. */
async function canConnect(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000 });
  try {
    await client.connect();
    await client.query('select 1');
    return true;
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === '28000' || code === '28P01' || code === '3D000') return false;
    const { host, port } = describePgUrl(url);
    throw new DemoError(`PostgreSQL is not reachable at ${host}:${port} (${(e as Error).message}). Start it, or point DATABASE_URL at it.`);
  } finally {
    await client.end().catch(() => {});
  }
}

async function prepareDatabase(config: Config): Promise<void> {
  say(`[1/7] Database    ${safeUrl(config.DATABASE_URL)}`);
  const ready = (await canConnect(config.DATABASE_URL)) && (await canConnect(config.MIGRATION_DATABASE_URL));
  if (!ready) {
    const adminUrl = config.DATABASE_ADMIN_URL ?? DEFAULT_ADMIN_URL;
    say(`      creating roles and database through ${safeUrl(adminUrl)}`);
    try {
      const log = await setupDatabase({ adminUrl, ownerUrl: config.MIGRATION_DATABASE_URL, appUrl: config.DATABASE_URL });
      for (const l of log) say(`      ${l}`);
    } catch (e) {
      throw new DemoError(`could not create the roles and database as ${safeUrl(adminUrl)}: ${(e as Error).message}. Set DATABASE_ADMIN_URL to a superuser URL.`);
    }
  }
  const applied = await migrate(config, entities);
  say(`      ${applied.length ? `applied migrations: ${applied.join(', ')}` : 'roles, database and schema in place; no pending migrations'}`);
}

async function checkRedis(url: string): Promise<void> {
  say(`[2/7] Redis       ${safeUrl(url)}`);
  const redis = new Redis(url, { lazyConnect: true, connectTimeout: 3000, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false });
  let lastError: Error | undefined;
  redis.on('error', (e: Error) => (lastError = e));
  try {
    await redis.connect();
    const policy = (await redis.call('config', 'get', 'maxmemory-policy').catch(() => [])) as string[];
    say(`      ok${policy[1] && policy[1] !== 'noeviction' ? ` (warning: maxmemory-policy is ${policy[1]}; BullMQ needs noeviction)` : ''}`);
  } catch (e) {
    throw new DemoError(`Redis is not reachable at ${safeUrl(url)} (${(lastError ?? (e as Error)).message}). Start it, or point REDIS_URL at it.`);
  } finally {
    redis.disconnect();
  }
}

/** The configured port when it is free, else one the OS picks. */
async function choosePort(preferred: number): Promise<number> {
  const tryListen = (port: number) =>
    new Promise<number | undefined>((resolve) => {
      const s = createServer();
      s.once('error', () => resolve(undefined));
      s.listen(port, () => {
        const addr = s.address();
        s.close(() => resolve(typeof addr === 'object' && addr ? addr.port : undefined));
      });
    });
  if (preferred > 0 && (await tryListen(preferred)) !== undefined) return preferred;
  const free = await tryListen(0);
  if (!free) throw new DemoError('could not find a free TCP port for the API');
  if (preferred > 0) say(`      port ${preferred} is in use; using ${free} instead`);
  return free;
}

async function http(base: string, method: string, path: string, token: string, body?: unknown): Promise<{ status: number; json: any }> {
  const headers: Record<string, string> = { authorization: `Bearer ${token}` };
  if (body !== undefined) {
    headers['content-type'] = 'application/json';
    headers['idempotency-key'] = randomUUID();
  }
  const res = await fetch(`${base}${path}`, { method, headers, signal: AbortSignal.timeout(15_000), ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  const text = await res.text();
  let json: any;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = { raw: text };
  }
  return { status: res.status, json };
}

function expectStatus(res: { status: number; json: any }, status: number, what: string): any {
  if (res.status !== status) throw new DemoError(`${what}: expected HTTP ${status}, got ${res.status}: ${JSON.stringify(res.json)}`);
  return res.json;
}

function describeStep(step: any): string {
  const o = step.output ?? {};
  switch (step.name) {
    case 'partner-dossier':
      return `completeness ${o.facts?.completeness_score}, risk flags: ${o.facts?.risk_flags?.length ? o.facts.risk_flags.join(', ') : 'none'}`;
    case 'economics-model':
      return `upside ${fmt(o.revenue_upside)} ${o.currency}, gross profit ${fmt(o.gross_profit)}, cost ${fmt(o.cost)}, payback ${o.payback_months ?? 'never'} months`;
    case 'approval-packet':
      return step.status === 'waiting'
        ? `class ${o.approval_class} (${o.reasons?.join('; ')}): waiting for ${o.required_approvals} approver(s), SLA until ${o.sla_deadline}`
        : `class ${o.approval_class}: ${o.outcome}${o.decisions?.length ? ` by ${o.decisions.map((d: any) => d.decided_by).join(', ')}` : ''}`;
    case 'evidence-pack':
      return `outcome ${o.outcome}, sha256 ${o.sha256}`;
    default:
      return step.status;
  }
}

/** Polls the run, printing each step once as it completes or starts waiting, until one of `statuses`. */
async function follow(base: string, token: string, runId: string, statuses: string[], printed: Set<string>, timeoutMs: number): Promise<any> {
  return until(`run ${runId} to reach ${statuses.join(' or ')}`, timeoutMs, async () => {
    const run = expectStatus(await http(base, 'GET', `/api/v1/golden-path/runs/${runId}`, token), 200, 'reading the run');
    for (const s of run.steps) {
      const key = `${s.sequence_num}:${s.status}`;
      if ((s.status === 'completed' || s.status === 'waiting') && !printed.has(key)) {
        printed.add(key);
        say(`      ${s.status === 'completed' ? 'done' : 'wait'}  ${s.sequence_num} ${s.name.padEnd(16)} ${describeStep(s)}`);
      }
    }
    if (run.status === 'failed') throw new DemoError(`the run failed: ${JSON.stringify(run.error)}`);
    return statuses.includes(run.status) ? run : undefined;
  });
}

async function startProcesses(config: Config, env: Record<string, string>): Promise<{ base: string; port: number }> {
  const port = await choosePort(config.PORT);
  const childEnv = { ...env, PORT: String(port) };
  const register = ['--import', './src/platform/telemetry/register.ts'];
  const api = new Child('API', [...register, 'src/server.ts'], childEnv);
  const worker = new Child('worker', [...register, 'workers/golden-path.worker.ts'], childEnv);
  children.push(api, worker);
  const base = `http://127.0.0.1:${port}`;
  await until('the API to answer /readyz', 60_000, async () => {
    const res = await fetch(`${base}/readyz`, { signal: AbortSignal.timeout(3000) });
    if (res.status !== 200) throw new Error(`/readyz answered ${res.status}: ${(await res.text()).slice(0, 300)}`);
    return true;
  });
  say(`      API ready at http://localhost:${port} (pid ${api.proc.pid})`);
  await until('the worker to start', 60_000, async () => (worker.saw('worker started') ? true : undefined));
  say(`      worker started (pid ${worker.proc.pid})`);
  return { base, port };
}

async function runGoldenPath(config: Config, base: string, port: number, opts: { secretGenerated: boolean; keepRunning: boolean }): Promise<void> {
  const { secretGenerated, keepRunning } = opts;
  const tenant = randomUUID();
  const submitter = await signDevToken(config, { tenantId: tenant, sub: 'demo-submitter' });
  const approver = await signDevToken(config, { tenantId: tenant, sub: 'demo-approver', roles: ['approver'] });
  say(`[4/7] Submitting a class B partner verification as demo-submitter (tenant ${tenant})`);
  const started = Date.now();
  const accepted = expectStatus(await http(base, 'POST', '/api/v1/golden-path/run', submitter, SUBMISSION), 202, 'submitting the run');
  say(`      202 Accepted: run ${accepted.run_id}, correlation id ${accepted.correlation_id}`);
  const printed = new Set<string>();
  const waiting = await follow(base, submitter, accepted.run_id, ['waiting'], printed, 60_000);

  say('[5/7] Approving as a second user, demo-approver (role approver)');
  const approvalId = waiting.steps[2].output.approval_request_id as string;
  const pending = expectStatus(await http(base, 'GET', '/api/v1/approvals?status=pending', approver), 200, 'listing pending approvals');
  if (!pending.items.some((a: any) => a.approval_request_id === approvalId)) throw new DemoError('the run\'s approval request is not in the pending list');
  const decision = expectStatus(await http(base, 'POST', `/api/v1/approvals/${approvalId}/decision`, approver, { decision: 'approve', comment: 'demo: economics reviewed' }), 200, 'approving');
  say(`      decision recorded: ${decision.status} (${decision.approvals}/${decision.required_approvals} approvals)`);
  const done = await follow(base, submitter, accepted.run_id, ['completed'], printed, 60_000);
  say(`      run ${done.status} in ${((Date.now() - started) / 1000).toFixed(1)} s`);

  say('[6/7] Evidence pack');
  const evidence = expectStatus(await http(base, 'GET', done.links.evidence, submitter), 200, 'reading the evidence pack');
  const verify = expectStatus(await http(base, 'GET', done.links.verify, submitter), 200, 'verifying the evidence pack');
  say(`      sha256  ${evidence.sha256}  (SHA-256 of the RFC 8785 canonical JSON)`);
  say(`      verify  ${verify.valid ? 'valid' : 'INVALID'}: recomputed ${verify.recomputed_sha256 ?? verify.sha256}`);
  if (!verify.valid) throw new DemoError('the evidence pack did not verify');

  say('[7/7] Operators');
  const admin = await signDevToken(config, { tenantId: tenant, sub: 'demo-operator', roles: ['admin'], ttlSeconds: 8 * 3600 });
  say(`      Bull Board   http://localhost:${port}/admin/queues   (queues under the prefix "${config.QUEUE_PREFIX}"; needs role admin)`);
  if (keepRunning) say(`      open now     http://localhost:${port}/admin/queues?token=${admin}`);
  else say('      to browse it, run `npm run demo -- --keep-running`, or `npm run start:api` with a JWT_SECRET in .env');
  say('      admin token  npm run token -- --tenant <tenant uuid> --sub <you> --roles admin');
  say('                   then open /admin/queues?token=<token> once (it becomes a cookie), or send it as a Bearer header');
  if (secretGenerated) say('      note         this demo generated its JWT_SECRET; set one in .env (see .env.example) so npm run token matches the API');
}

async function shutdown(graceMs: number): Promise<boolean> {
  const codes = await Promise.all(children.map((c) => c.stop(graceMs)));
  return codes.every((c) => c === 0 || c === null);
}

function printLogs(): void {
  for (const c of children) {
    console.error(`\n--- last lines of the ${c.name} log (pid ${c.proc.pid}) ---`);
    for (const l of c.tail(80)) console.error(l);
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { 'keep-running': { type: 'boolean', default: false } } });
  const generatedSecret = `demo-${randomBytes(24).toString('hex')}`;
  let env: Record<string, string>;
  let config: Config;
  try {
    env = environmentWith({ JWT_SECRET: generatedSecret });
    config = parseConfig(env);
    // Without a collector the OTel SDK would only log export failures: off unless telemetry is configured.
    if (!config.OTEL_EXPORTER_OTLP_ENDPOINT && !config.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) env = environmentWith({ JWT_SECRET: generatedSecret, OTEL_SDK_DISABLED: 'true' });
  } catch (e) {
    if (e instanceof ConfigError) throw new DemoError(e.message);
    throw e;
  }
  if (config.JWT_JWKS_URL) throw new DemoError('JWT_JWKS_URL is set: the demo signs development tokens with JWT_SECRET, which the API would not accept. Unset JWT_JWKS_URL for the demo.');
  const secretGenerated = config.JWT_SECRET === generatedSecret;
  // The children log at info at least, so their start-up lines can be awaited and shown on failure.
  const childEnv = { ...env, LOG_LEVEL: config.LOG_LEVEL === 'debug' || config.LOG_LEVEL === 'trace' ? config.LOG_LEVEL : 'info' };

  say('Dealix demo: the golden path (partner tier-1 verification) end to end\n');
  await prepareDatabase(config);
  await checkRedis(config.REDIS_URL);
  say(`[3/7] Starting the API and a worker${secretGenerated ? ' (JWT_SECRET not configured: generated one for this demo)' : ''}`);
  const { base, port } = await startProcesses(config, childEnv);
  await runGoldenPath(config, base, port, { secretGenerated, keepRunning: values['keep-running'] ?? false });
  if (values['keep-running']) {
    say(`\nThe API (http://localhost:${port}) and the worker keep running; press Ctrl-C to stop them.`);
    await new Promise<void>((resolve) => (endKeepRunning = resolve));
  }
  say('\nShutting down the API and the worker…');
  const clean = await shutdown(config.WORKER_SHUTDOWN_GRACE + 10_000);
  say(clean ? 'Both stopped cleanly. The demo succeeded.' : 'The demo succeeded, but a child did not stop cleanly.');
  return 0;
}

let endKeepRunning: (() => void) | undefined;
let stopping = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (endKeepRunning) return endKeepRunning(); // --keep-running: a signal is the way to finish normally
    if (stopping) return;
    stopping = true;
    console.error(`\n${signal}: stopping the demo`);
    void shutdown(5_000).finally(() => process.exit(130));
  });
}

try {
  process.exitCode = await main();
} catch (e) {
  console.error(`\ndemo failed: ${e instanceof DemoError ? e.message : ((e as Error).stack ?? String(e))}`);
  printLogs();
  await shutdown(5_000);
  process.exitCode = 1;
}
