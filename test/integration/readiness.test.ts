import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { z } from 'zod';
import { PUBLISHED_JWT_SECRETS, parseConfig } from '../../src/platform/config/config.ts';
import { assessReadiness } from '../../src/readiness/readiness.target.ts';
import { defineStep, defineWorkflow } from '../../src/platform/durable/workflow.ts';
import { WorkflowRegistry } from '../../src/platform/durable/registry.ts';
import { registeredWorkflows } from '../helpers/registered-workflows.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { dropKeys, envFor, matrixFor, matrixOf } from './readiness.fixtures.ts';

/**
 * The release readiness matrix on the live system (real container, real app, real Postgres and Redis):
 * a healthy stack is all PASS, through the API and through `npm run readiness`; then each component is
 * broken in a throwaway environment and its row, and only the rows it concerns, turn FAIL.
 * Database rows: readiness-database.test.ts; HTTP rows: readiness-http.test.ts; Redis rows: readiness-redis.test.ts.
 */
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const run = promisify(execFile);

/** The rows a production deployment must pass and any other reports N/A when unmet (NODE_ENV is not production here). */
const PRODUCTION_ONLY = ['postgres-autovacuum', 'webhook-ssrf-guard', 'database-credentials', 'tls-verification', 'redis-persistence'];

describe('a healthy stack', () => {
  it('prints an all-PASS matrix with a row per tenant-owned table', async () => {
    const m = await matrixFor();
    expect(m.failing()).toEqual([]);
    expect(m.report.ok).toBe(true);
    for (const table of ['durable_runs', 'durable_checkpoints', 'idempotency_keys', 'approval_requests', 'evidence_packs', 'partner_offboardings']) {
      expect(m.row(`rls ${table}`).status).toBe('PASS');
      expect(m.row(`tenant-unique ${table}`).status).toBe('PASS');
    }
    for (const c of ['config', 'app-role', 'migrations', 'schema-drift', 'routes-idempotency', 'routes-authentication', 'bull-board-auth', 'bull-board-queues', 'telemetry', 'jwt-keys', 'redis', 'redis-eviction', 'redis-timeout', 'connection-budget', 'worker-settings', 'workflow-versions']) {
      expect(m.row(c).status).toBe('PASS');
    }
    // Production requirements, outside production: PASS when met, else N/A saying so — never a PASS they did not earn.
    for (const c of PRODUCTION_ONLY) {
      const row = m.row(c);
      if (row.status !== 'PASS') expect(row).toMatchObject({ status: 'N/A', reason: expect.stringMatching(/^not required outside production \(/) });
    }
  });

  it('npm run readiness exits 0 and --json reports every row PASS (the production-only ones PASS or N/A)', async () => {
    const db = await createTestDatabase();
    const env: Record<string, string> = { PATH: process.env.PATH ?? '', ...envFor(db) };
    try {
      const text = await run(process.execPath, ['src/cli/readiness.ts'], { cwd: ROOT, env, timeout: 90_000 });
      expect(text.stdout).toMatch(/READY: \d+ of \d+ components PASS/);
      const json = await run(process.execPath, ['src/cli/readiness.ts', '--json'], { cwd: ROOT, env, timeout: 90_000 });
      const report = JSON.parse(json.stdout);
      expect(report.ok).toBe(true);
      expect(report.rows.length).toBeGreaterThan(20);
      const notPassing = report.rows.filter((r: { status: string }) => r.status !== 'PASS');
      expect(notPassing.filter((r: { component: string; status: string }) => r.status !== 'N/A' || !PRODUCTION_ONLY.includes(r.component))).toEqual([]);
    } finally {
      await db.drop();
      await dropKeys(env.REDIS_URL!, env.QUEUE_PREFIX!);
    }
  });
});

describe('npm run readiness on a broken stack', () => {
  it('exits non-zero and names the failing row', async () => {
    const db = await createTestDatabase();
    const env: Record<string, string> = { PATH: process.env.PATH ?? '', ...envFor(db) };
    try {
      await db.admin('ALTER TABLE durable_runs NO FORCE ROW LEVEL SECURITY');
      const err = await run(process.execPath, ['src/cli/readiness.ts'], { cwd: ROOT, env, timeout: 90_000 }).then(
        () => undefined,
        (e: { code: number; stdout: string }) => e,
      );
      expect(err?.code).toBe(1);
      expect(err?.stdout).toMatch(/FAIL ✗\s+rls durable_runs\s+row-level security is not forced/);
      expect(err?.stdout).toMatch(/NOT READY/);
    } finally {
      await db.drop();
      await dropKeys(env.REDIS_URL!, env.QUEUE_PREFIX!);
    }
  });
});

describe('configuration and documents', () => {
  let docsless: string;
  beforeAll(async () => {
    docsless = await mkdtemp(join(tmpdir(), 'dealix-docs-'));
  });
  afterAll(async () => {
    await rm(docsless, { recursive: true, force: true });
  });

  it('an invalid configuration is a FAIL row naming the variable, not a crash', async () => {
    const m = matrixOf(await assessReadiness(() => parseConfig({ JWT_SECRET: 'too-short', WORKER_CONCURRENCY: 'many' })));
    expect(m.row('config').status).toBe('FAIL');
    expect(m.row('config').reason).toMatch(/JWT_SECRET/);
    expect(m.row('config').reason).toMatch(/WORKER_CONCURRENCY/);
    expect(m.report.ok).toBe(false);
  });

  // The API refuses to start on it (createContainer); the matrix, which judges that API, says so in the same words.
  it("a tenant's database share larger than the API's pool fails the config row with the API's start-up message", async () => {
    const m = await matrixFor({ env: { API_MAX_DB_CONNECTIONS_PER_TENANT: '4' } });
    expect(m.row('config')).toMatchObject({ status: 'FAIL', reason: expect.stringMatching(/^invalid: API_MAX_DB_CONNECTIONS_PER_TENANT: 4 is more than the API's pool of 3 connections \(DATABASE_POOL_MAX=3\)/) });
    expect(m.report.ok).toBe(false);
  });

  // As the API at start: a tenant's share of the in-flight places at or above the process's cap bounds nothing, named with the other problems.
  it("a tenant's in-flight share not below API_MAX_INFLIGHT fails the config row with the API's start-up message, beside the database share's", async () => {
    const m = await matrixFor({ env: { API_MAX_DB_CONNECTIONS_PER_TENANT: '4', API_MAX_INFLIGHT: '8', API_MAX_INFLIGHT_PER_TENANT: '8' } });
    expect(m.row('config')).toMatchObject({
      status: 'FAIL',
      reason: expect.stringMatching(/^invalid: API_MAX_DB_CONNECTIONS_PER_TENANT: 4 is more than .*; API_MAX_INFLIGHT_PER_TENANT: 8 is not below API_MAX_INFLIGHT \(8\): one tenant could take every in-flight place/),
    });
    expect(m.report.ok).toBe(false);
  });

  it('missing release-gate and runbook documents fail their rows', async () => {
    const m = await matrixFor({ adjust: () => ({ docsRoot: docsless }) });
    expect(m.row('docs docs/governance/release-gates.md').status).toBe('FAIL');
    expect(m.row('docs docs/runbook.md').status).toBe('FAIL');
    await mkdir(join(docsless, 'docs/governance'), { recursive: true });
    await writeFile(join(docsless, 'docs/governance/release-gates.md'), '# gates\n');
    await writeFile(join(docsless, 'docs/runbook.md'), '');
    const again = await matrixFor({ adjust: () => ({ docsRoot: docsless }) });
    expect(again.row('docs docs/governance/release-gates.md').status).toBe('PASS');
    expect(again.row('docs docs/runbook.md')).toMatchObject({ status: 'FAIL', reason: 'empty' });
  });

  it('telemetry neither configured nor disabled fails; an OTLP endpoint passes', async () => {
    const none = await matrixFor({ env: { OTEL_SDK_DISABLED: 'false' } });
    expect(none.row('telemetry')).toMatchObject({ status: 'FAIL' });
    expect(none.row('telemetry').reason).toMatch(/neither configured nor disabled/);
    const otlp = await matrixFor({ env: { OTEL_SDK_DISABLED: 'false', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318' } });
    expect(otlp.row('telemetry').status).toBe('PASS');
  });

  it('an OTEL_TRACES_EXPORTER the platform does not support fails telemetry: its spans would go nowhere, silently', async () => {
    for (const exporters of ['bogus', 'otlp,jaeger']) {
      const m = await matrixFor({ env: { OTEL_SDK_DISABLED: 'false', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318', OTEL_TRACES_EXPORTER: exporters } });
      expect(m.row('telemetry'), exporters).toMatchObject({ status: 'FAIL' });
      expect(m.row('telemetry').reason).toMatch(new RegExp(`unsupported OTEL_TRACES_EXPORTER "${exporters.split(',').pop()}"`));
    }
    const both = await matrixFor({ env: { OTEL_SDK_DISABLED: 'false', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318', OTEL_TRACES_EXPORTER: 'otlp, console' } });
    expect(both.row('telemetry').status).toBe('PASS');
  });

  it('a JWT secret published in .env.example or docker-compose.yml fails jwt-keys; JWKS or a secret of its own passes', async () => {
    for (const secret of PUBLISHED_JWT_SECRETS) {
      const published = await matrixFor({ env: { JWT_SECRET: secret } });
      expect(published.failing().map((r) => r.split(':')[0])).toEqual(['jwt-keys']);
      expect(published.row('jwt-keys').reason).toMatch(/anyone can sign a token for any tenant/);
    }
    expect((await matrixFor()).row('jwt-keys').reason).toMatch(/HS256 with a JWT_SECRET of its own/);
    const jwks = await matrixFor({ env: { JWT_SECRET: PUBLISHED_JWT_SECRETS[0]!, JWT_JWKS_URL: 'https://idp.example/.well-known/jwks.json' } });
    expect(jwks.row('jwt-keys')).toMatchObject({ status: 'PASS', reason: 'RS256/ES256 keys from https://idp.example/.well-known/jwks.json; kept up to 1d past their age while it cannot be fetched' });
    // The algorithms JWT_ALGORITHMS allows, not the default's: the row said RS256/ES256 of a PS256-only list.
    const ps = await matrixFor({ env: { JWT_JWKS_URL: 'https://idp.example/.well-known/jwks.json', JWT_ALGORITHMS: 'PS256', JWT_JWKS_MAX_STALE: '0' } });
    expect(ps.row('jwt-keys')).toMatchObject({ status: 'PASS', reason: 'PS256 keys from https://idp.example/.well-known/jwks.json; none kept past their age (JWT_JWKS_MAX_STALE=0)' });
  });
});

describe('JWKS over plain http', () => {
  it('a JWT_JWKS_URL that is not https fails jwt-keys in production (whatever let the process start with it); outside production it passes, saying so', async () => {
    const env = { JWT_JWKS_URL: 'http://127.0.0.1:1/jwks.json' };
    const production = (d: { config: object }) => ({ config: { ...d.config, NODE_ENV: 'production' } as never });
    const [dev, prod] = [await matrixFor({ env }), await matrixFor({ env, adjust: production })];
    expect(prod.row('jwt-keys')).toMatchObject({ status: 'FAIL', reason: expect.stringMatching(/^JWT_JWKS_URL http:\/\/127\.0\.0\.1:1\/jwks\.json is not https: .*set JWT_JWKS_URL to the identity provider's https:\/\/ key set URL/) });
    expect(dev.row('jwt-keys')).toMatchObject({ status: 'PASS', reason: expect.stringMatching(/^RS256\/ES256 keys from http:\/\/127\.0\.0\.1:1\/jwks\.json over plain http \(refused in production\);/) });
  });
});

describe('webhook SSRF guard', () => {
  it('WEBHOOK_ALLOW_PRIVATE_NETWORKS=true fails webhook-ssrf-guard in production and passes elsewhere with a note; off passes', async () => {
    const open = { env: { WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true' } };
    const production = (d: { config: object }) => ({ config: { ...d.config, NODE_ENV: 'production' } as never });
    const [dev, prod, guarded] = [await matrixFor(open), await matrixFor({ ...open, adjust: production }), await matrixFor({ adjust: production })];
    expect(dev.failing()).toEqual([]);
    expect(dev.row('webhook-ssrf-guard')).toMatchObject({ status: 'N/A', reason: expect.stringMatching(/^not required outside production \(WEBHOOK_ALLOW_PRIVATE_NETWORKS=true: /) });
    expect(prod.row('webhook-ssrf-guard')).toMatchObject({ status: 'FAIL', reason: expect.stringMatching(/WEBHOOK_ALLOW_PRIVATE_NETWORKS=true.*loopback, private and link-local/) });
    expect(guarded.row('webhook-ssrf-guard')).toMatchObject({ status: 'PASS', reason: expect.stringMatching(/public addresses only/) });
  });
});

describe('TLS certificate verification', () => {
  // The row reads the environment of the process the matrix runs in (Node reads it there, at every TLS connection), not the configuration.
  it('NODE_TLS_REJECT_UNAUTHORIZED=0 fails tls-verification in production and is N/A with a note elsewhere; unset or any other value passes', async () => {
    const production = (d: { config: object }) => ({ config: { ...d.config, NODE_ENV: 'production' } as never });
    const off = (env: NodeJS.ProcessEnv) => () => ({ processEnv: env });
    const prod = await matrixFor({ adjust: (d) => ({ ...production(d), processEnv: { NODE_TLS_REJECT_UNAUTHORIZED: '0' } }) });
    expect(prod.row('tls-verification')).toMatchObject({ status: 'FAIL', reason: expect.stringMatching(/^NODE_TLS_REJECT_UNAUTHORIZED=0: .*certificates are not verified.*NODE_EXTRA_CA_CERTS/) });
    expect(prod.failing().filter((r) => r.startsWith('tls-verification'))).toHaveLength(1);
    const dev = await matrixFor({ adjust: off({ NODE_TLS_REJECT_UNAUTHORIZED: '0' }) });
    expect(dev.failing()).toEqual([]);
    expect(dev.row('tls-verification')).toMatchObject({ status: 'N/A', reason: expect.stringMatching(/^not required outside production \(NODE_TLS_REJECT_UNAUTHORIZED=0: /) });
    for (const env of [{}, { NODE_TLS_REJECT_UNAUTHORIZED: '1' }, { NODE_TLS_REJECT_UNAUTHORIZED: 'false' }]) {
      const verified = await matrixFor({ adjust: (d) => ({ ...production(d), processEnv: env }) });
      expect(verified.row('tls-verification'), JSON.stringify(env)).toMatchObject({ status: 'PASS', reason: expect.stringMatching(/certificates are verified/) });
    }
  });

  it('npm run readiness reads NODE_TLS_REJECT_UNAUTHORIZED from its own environment', async () => {
    const db = await createTestDatabase();
    const env: Record<string, string> = { PATH: process.env.PATH ?? '', ...envFor(db), NODE_TLS_REJECT_UNAUTHORIZED: '0' };
    try {
      const json = await run(process.execPath, ['src/cli/readiness.ts', '--json'], { cwd: ROOT, env, timeout: 90_000 });
      const rows = JSON.parse(json.stdout).rows as Array<{ component: string; status: string; reason: string }>;
      expect(rows.find((r) => r.component === 'tls-verification')).toMatchObject({ status: 'N/A', reason: expect.stringMatching(/NODE_TLS_REJECT_UNAUTHORIZED=0/) });
    } finally {
      await db.drop();
      await dropKeys(env.REDIS_URL!, env.QUEUE_PREFIX!);
    }
  });
});

describe('database credentials', () => {
  it('a database URL with a password this repository publishes fails database-credentials in production, naming the setting; passes elsewhere with a note', async () => {
    const production = (d: { config: object }) => ({ config: { ...d.config, NODE_ENV: 'production' } as never });
    const published = { env: { DATABASE_URL: 'postgres://dealix_app:dealix_app@db.internal:5432/dealix', MIGRATION_DATABASE_URL: 'postgres://dealix_owner:dealix_owner@db.internal:5432/dealix' } };
    const prod = await matrixFor({ ...published, adjust: production });
    expect(prod.row('database-credentials')).toMatchObject({ status: 'FAIL', reason: expect.stringMatching(/DATABASE_URL, MIGRATION_DATABASE_URL .*migrations\/bootstrap\/roles\.sql/) });
    expect(prod.row('database-credentials').reason).not.toContain('dealix_app:');
    const dev = await matrixFor(published);
    expect(dev.row('database-credentials')).toMatchObject({ status: 'N/A', reason: expect.stringMatching(/^not required outside production \(DATABASE_URL, MIGRATION_DATABASE_URL /) });
    const own = await matrixFor({ env: { DATABASE_URL: 'postgres://dealix_app:s3cret-of-its-own@db.internal:5432/dealix', MIGRATION_DATABASE_URL: 'postgres://dealix_owner@db.internal:5432/dealix' }, adjust: production });
    expect(own.row('database-credentials')).toMatchObject({ status: 'PASS', reason: expect.stringMatching(/no database URL uses a published password/) });
  });
});

describe('worker settings', () => {
  it('a lock longer than 60 s, a stalled check slower than the lock and a single allowed stall fail', async () => {
    const m = await matrixFor({ env: { WORKER_LOCK_DURATION: '90s', WORKER_STALLED_INTERVAL: '2m', WORKER_MAX_STALLED_COUNT: '1' } });
    const row = m.row('worker-settings');
    expect(row.status).toBe('FAIL');
    expect(row.reason).toMatch(/WORKER_LOCK_DURATION 90000 ms is outside/);
    expect(row.reason).toMatch(/WORKER_STALLED_INTERVAL 120000 ms exceeds/);
    expect(row.reason).toMatch(/WORKER_MAX_STALLED_COUNT 1 < 3/);
  });

  it('a step failed after fewer than 3 crashes, or allowed more crashes than BullMQ allows stalls, fails (ADR 0016); the defaults pass and say the limit', async () => {
    const few = await matrixFor({ env: { STEP_MAX_CRASHES: '2' } });
    expect(few.row('worker-settings')).toMatchObject({ status: 'FAIL', reason: expect.stringMatching(/STEP_MAX_CRASHES 2 < 3/) });
    const many = await matrixFor({ env: { STEP_MAX_CRASHES: '12', WORKER_MAX_STALLED_COUNT: '10' } });
    expect(many.row('worker-settings')).toMatchObject({ status: 'FAIL', reason: expect.stringMatching(/STEP_MAX_CRASHES 12 > WORKER_MAX_STALLED_COUNT 10/) });
    const defaults = await matrixFor({});
    expect(defaults.row('worker-settings')).toMatchObject({ status: 'PASS', reason: expect.stringMatching(/max crashes per step 5/) });
  });

  it('two allowed stalls fail as too few: no STEP_MAX_CRASHES would pass (3 at least, at most the stalls), so the row names the stalls to raise; three stalls and three crashes pass', async () => {
    for (const crashes of ['2', '3']) {
      const two = await matrixFor({ env: { WORKER_MAX_STALLED_COUNT: '2', STEP_MAX_CRASHES: crashes } });
      expect(two.row('worker-settings')).toMatchObject({ status: 'FAIL', reason: expect.stringMatching(/WORKER_MAX_STALLED_COUNT 2 < 3: /) });
    }
    const three = await matrixFor({ env: { WORKER_MAX_STALLED_COUNT: '3', STEP_MAX_CRASHES: '3' } });
    expect(three.row('worker-settings')).toMatchObject({ status: 'PASS', reason: expect.stringMatching(/max stalls 3, max crashes per step 3/) });
  });

  it('a lock shorter than a second fails', async () => {
    const m = await matrixFor({ env: { WORKER_LOCK_DURATION: '500ms', WORKER_STALLED_INTERVAL: '200ms' } });
    expect(m.row('worker-settings').reason).toMatch(/WORKER_LOCK_DURATION 500 ms is outside/);
  });

  it('a step retried more than 25 times fails, naming the step', async () => {
    const step = defineStep({ name: 'hammer', input: z.any(), output: z.any(), retry: { attempts: 50 }, run: async () => ({}) });
    const wf = defineWorkflow({ name: 'retry-storm', version: 1, tag: 'rs', queue: 'retry-storm', input: z.any(), steps: [step] });
    const m = await matrixFor({ adjust: (d) => ({ workflows: [...d.workflows, wf] }) });
    expect(m.row('worker-settings')).toMatchObject({ status: 'FAIL' });
    expect(m.row('worker-settings').reason).toMatch(/step retry-storm\/hammer has 50 attempts/);
  });
});

describe('workflow versions', () => {
  const run = (db: TestDatabase, workflow: string, version: number, status: string) =>
    db.admin(
      `insert into durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, correlation_id, sequence_num, step_count, created_at, updated_at)
       values (gen_random_uuid(), gen_random_uuid(), $1, $2, md5(random()::text), $3, 'u', '{}', 'c', 0, 4, now(), now())`,
      [workflow, version, status],
    );

  it('active runs of registered versions, ended runs of any version and another deployment\'s workflows pass, each named', async () => {
    const m = await matrixFor({
      tamper: async (db) => {
        await run(db, 'golden-path', 1, 'waiting');
        await run(db, 'golden-path', 1, 'running');
        await run(db, 'golden-path', 7, 'completed');
        await run(db, 'elsewhere', 3, 'pending');
      },
    });
    expect(m.row('workflow-versions')).toMatchObject({ status: 'PASS' });
    // The versions the modules register, read from them: a new workflow's joins the row by itself (docs/runtime.md, *Adding a workflow*).
    const registered = new WorkflowRegistry(registeredWorkflows()).labels();
    expect(registered).toEqual(expect.arrayContaining(['golden-path@v1', 'partner-offboarding@v1']));
    expect(m.row('workflow-versions').reason).toContain(`registers ${registered.join(', ')}; active runs: golden-path@v1 (2); `);
    expect(m.row('workflow-versions').reason).toMatch(/another deployment's.*elsewhere@v3 \(1\)/);
  });

  it('an active run of a version the release no longer registers fails, naming the version and its runs', async () => {
    const m = await matrixFor({ tamper: (db) => run(db, 'golden-path', 2, 'waiting').then(() => run(db, 'golden-path', 2, 'pending')).then(() => undefined) });
    expect(m.row('workflow-versions')).toMatchObject({ status: 'FAIL' });
    expect(m.row('workflow-versions').reason).toMatch(/active runs of versions this release does not register: golden-path@v2 \(2\); keep each version registered until its runs have ended/);
  });
});

describe('a stack that cannot be built', () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db.drop();
  });

  // Checked once the workflows are known, as the processes check it at start: it was `config` PASS and
  // `live-system` FAIL "could not build the container" with the error's text.
  it('a WORKFLOW_VERSIONS_RETIRED the workflows refuse fails the config row with the message the processes stop with', async () => {
    const env = envFor(db, { WORKFLOW_VERSIONS_RETIRED: 'golden-path-v1' });
    try {
      const m = matrixOf(await assessReadiness(() => parseConfig(env)));
      expect(m.row('config')).toMatchObject({ status: 'FAIL', reason: 'invalid: WORKFLOW_VERSIONS_RETIRED: "golden-path-v1" is not name@vN (e.g. golden-path@v1)' });
      expect(m.row('live-system')).toMatchObject({ status: 'FAIL', reason: 'not inspected: the configuration is invalid' });
    } finally {
      await dropKeys(env.REDIS_URL!, env.QUEUE_PREFIX!);
    }
  });

  // The API's own settings (apiConfigProblems) too, as the API names them all at start: the row named the workflows' problem alone.
  it('a refused WORKFLOW_VERSIONS_RETIRED and a share larger than the pool are both in the config row', async () => {
    const env = envFor(db, { WORKFLOW_VERSIONS_RETIRED: 'golden-path-v1', API_MAX_DB_CONNECTIONS_PER_TENANT: '4' });
    try {
      const m = matrixOf(await assessReadiness(() => parseConfig(env)));
      expect(m.row('config')).toMatchObject({ status: 'FAIL', reason: expect.stringMatching(/^invalid: WORKFLOW_VERSIONS_RETIRED: .*; API_MAX_DB_CONNECTIONS_PER_TENANT: 4 is more than the API's pool of 3/) });
    } finally {
      await dropKeys(env.REDIS_URL!, env.QUEUE_PREFIX!);
    }
  });

  it('an unreachable database is a FAIL row with the reason, not a crash', async () => {
    const env = envFor(db, { DATABASE_URL: db.appUrl.replace(/:\d+\//, ':1/') });
    try {
      const m = matrixOf(await assessReadiness(() => parseConfig(env)));
      expect(m.report.ok).toBe(false);
      expect(m.failing().join('\n')).toMatch(/^(database|live-system): .*(ECONNREFUSED|connect)/m);
    } finally {
      await dropKeys(env.REDIS_URL!, env.QUEUE_PREFIX!);
    }
  });
});

