import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { TEST_JWT_SECRET } from '../helpers/env.ts';
import { TEST_APP } from '../helpers/env.ts';
import { createTestDatabase, seedRun, type TestDatabase } from '../helpers/db.ts';
import { stepCheckpointNames } from '../helpers/evidence.ts';

/**
 * The triggers that keep history (ADR 0001, amendments "Checkpoints are history" and "Trigger functions
 * name what they read"; ADR 0010, 0011) must read the tables they mean, whatever the writing session put
 * on its search path. PostgreSQL looks a relation up in the session's temporary schema before pg_catalog
 * and public: a session that may create temporary tables (TEMP on the database; db:setup revokes it, a
 * provider's database may grant it to PUBLIC) shadowed `pg_roles`, `durable_runs`, `evidence_seals` and
 * `approval_policies` with its own rows, and each trigger read those. Here the application role gets TEMP
 * on a throwaway database of this test only, and every shadow must change nothing.
 */
let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
  await db.admin(`GRANT TEMPORARY ON DATABASE ${db.name} TO ${TEST_APP.user}`);
});

afterAll(async () => {
  await db?.admin(`REVOKE TEMPORARY ON DATABASE ${db.name} FROM ${TEST_APP.user}`).catch(() => {});
  await db?.drop();
});

/**
 * A session of its own as the application role (temporary tables live as long as it does): `shadow` runs
 * first, outside any transaction, then `sql` in a transaction bound to `tenant`. Its row count, or the
 * SQLSTATE it failed with (at the statement or at the commit: the policy guards are deferred).
 */
async function asAppWithShadow(tenant: string, shadow: string, sql: string, params: unknown[] = []): Promise<number | string> {
  const app = new pg.Client({ connectionString: db.appUrl });
  await app.connect();
  try {
    await app.query(shadow);
    await app.query('BEGIN');
    try {
      await app.query(`select set_config('app.tenant_id', $1, true)`, [tenant]);
      const res = await app.query(sql, params);
      await app.query('COMMIT');
      return res.rowCount ?? 0;
    } catch (err) {
      await app.query('ROLLBACK').catch(() => {});
      return (err as { code?: string }).code ?? String(err);
    }
  } finally {
    await app.end();
  }
}

/** A temporary `pg_roles` in which the application role is a superuser: what the history triggers let through. */
const SUPERUSER_SHADOW = `create temporary table pg_roles (rolname name, rolsuper boolean); insert into pg_roles values (current_user, true)`;

async function completedRun(tenant: string): Promise<string> {
  const run = await seedRun(db, tenant);
  await db.admin(
    `insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, output, attempt, created_at, updated_at, completed_at)
     values (gen_random_uuid(), $1, $2, 1, 'step-1', 'completed', '{"sha256":"a"}'::jsonb, 1, now(), now(), now())`,
    [tenant, run],
  );
  await db.admin(`update durable_runs set status = 'completed', output = '{"pack":"a"}'::jsonb, completed_at = now() where id = $1`, [run]);
  return run;
}

describe('history triggers under a session that shadows what they read with temporary tables', () => {
  it("a completed checkpoint stays history though the session's own pg_roles calls it a superuser (42501)", async () => {
    const tenant = randomUUID();
    const run = await completedRun(tenant);
    expect(await asAppWithShadow(tenant, SUPERUSER_SHADOW, `update durable_checkpoints set output = '{"sha256":"f"}'::jsonb where run_id = $1`, [run])).toBe('42501');
    expect((await db.admin(`select output from durable_checkpoints where run_id = $1`, [run])).rows).toEqual([{ output: { sha256: 'a' } }]);
  });

  it("an ended run stays history though the session's own pg_roles calls it a superuser (42501)", async () => {
    const tenant = randomUUID();
    const run = await completedRun(tenant);
    expect(await asAppWithShadow(tenant, SUPERUSER_SHADOW, `update durable_runs set output = '{"pack":"forged"}'::jsonb where id = $1`, [run])).toBe('42501');
    expect((await db.admin(`select output from durable_runs where id = $1`, [run])).rows).toEqual([{ output: { pack: 'a' } }]);
  });

  const packInsert = `insert into evidence_packs (id, tenant_id, run_id, content, sha256, created_at) values ($1, $2, $3, '{}'::jsonb, $4, now())`;

  it('an evidence pack for an ended run is refused (DX001) though the session has its own durable_runs calling it running', async () => {
    const tenant = randomUUID();
    const run = await completedRun(tenant);
    const shadow = `create temporary table durable_runs (tenant_id uuid, id uuid, status text); insert into durable_runs values ('${tenant}', '${run}', 'running')`;
    expect(await asAppWithShadow(tenant, shadow, packInsert, [randomUUID(), tenant, run, 'b'.repeat(64)])).toBe('DX001');
    expect((await db.admin(`select count(*)::int as n from evidence_packs where run_id = $1`, [run])).rows[0].n).toBe(0);
  });

  it("an evidence pack its run's evidence step did not write is refused (42501) though the session has its own durable_checkpoints naming it", async () => {
    const tenant = randomUUID();
    const run = await seedRun(db, tenant);
    const pack = randomUUID();
    const shadow = `create temporary table durable_checkpoints (tenant_id uuid, run_id uuid, step_name text, status text, output jsonb);
      insert into durable_checkpoints values ('${tenant}', '${run}', 'evidence-pack', 'completed', '{"evidence_pack_id": "${pack}", "sha256": "${'d'.repeat(64)}"}')`;
    expect(await asAppWithShadow(tenant, shadow, packInsert, [pack, tenant, run, 'd'.repeat(64)])).toBe('42501');
    expect((await db.admin(`select count(*)::int as n from evidence_packs where id = $1`, [pack])).rows[0].n).toBe(0);
  });

  it("an evidence pack's seal is written to evidence_seals though the session has a temporary table of that name", async () => {
    const tenant = randomUUID();
    const run = await seedRun(db, tenant);
    const pack = randomUUID();
    // Its run's evidence step's checkpoint names it: a pack commits only with it (step-rows-bound.test.ts).
    await stepCheckpointNames(db, tenant, run, 'evidence-pack', { evidence_pack_id: pack, sha256: 'c'.repeat(64) });
    const shadow = `create temporary table evidence_seals (id uuid, tenant_id uuid, run_id uuid, sha256 text, created_at timestamptz)`;
    expect(await asAppWithShadow(tenant, shadow, packInsert, [pack, tenant, run, 'c'.repeat(64)])).toBe(1);
    expect((await db.admin(`select sha256 from evidence_seals where id = $1`, [pack])).rows).toEqual([{ sha256: 'c'.repeat(64) }]);
  });

  const POLICY_COLUMNS = 'tenant_id, version, class_amax_cost, class_amax_payback_months, class_cmin_cost, class_cmin_payback_months, sla_bseconds, sla_cseconds, currency, updated_at, updated_by, approved_by';

  it("a policy version of the application's own making is refused (42501) though the session's own approval_policies holds it", async () => {
    const tenant = randomUUID();
    const values = `'${tenant}', 7, 1, 1, 2, 2, 60, 60, 'SAR', '2026-01-01T00:00:00Z', 'mallory', null`;
    // Columns named as the real table's, so the guard's comparison reads the shadow's row.
    const shadow = `create temporary table approval_policies (tenant_id uuid, version int, class_amax_cost float8, class_amax_payback_months float8, class_cmin_cost float8, class_cmin_payback_months float8, sla_bseconds int, sla_cseconds int, currency varchar(3), updated_at timestamptz, updated_by varchar(255), approved_by varchar(255));
      insert into approval_policies (${POLICY_COLUMNS}) values (${values})`;
    const forged = `insert into approval_policy_versions (id, ${POLICY_COLUMNS}) values (gen_random_uuid(), ${values})`;
    expect(await asAppWithShadow(tenant, shadow, forged)).toBe('42501');
    expect((await db.admin(`select count(*)::int as n from approval_policy_versions where tenant_id = $1`, [tenant])).rows[0].n).toBe(0);
  });

  it("a new policy version is recorded in approval_policy_versions though the session has a temporary table of that name", async () => {
    const tenant = randomUUID();
    const shadow = `create temporary table approval_policy_versions (id uuid, ${POLICY_COLUMNS.replace(/, /g, ' text, ')} text, primary key (tenant_id, version))`;
    const insert = `insert into approval_policies (id, tenant_id, class_amax_cost, class_amax_payback_months, class_cmin_cost, class_cmin_payback_months, sla_bseconds, sla_cseconds, currency, updated_at, updated_by, version)
      values (gen_random_uuid(), $1, 1, 1, 2, 2, 60, 60, 'SAR', now(), 'admin-1', 1)`;
    expect(await asAppWithShadow(tenant, shadow, insert, [tenant])).toBe(1);
    expect((await db.admin(`select version from approval_policy_versions where tenant_id = $1`, [tenant])).rows).toEqual([{ version: 1 }]);
  });

  it('every trigger function of the schema runs with a fixed search path, the temporary schema last', async () => {
    const fns = (
      await db.admin(
        `select p.proname as name, p.proconfig as config from pg_proc p join pg_namespace n on n.oid = p.pronamespace
          where n.nspname = 'public' and p.prorettype = 'trigger'::regtype order by 1`,
      )
    ).rows;
    expect(fns.length).toBeGreaterThanOrEqual(5);
    for (const fn of fns) expect(fn.config, fn.name).toEqual(['search_path=pg_catalog, public, pg_temp']);
  });

  it('durable_expect, the one function of the schema that is no trigger function, runs with the same fixed search path', async () => {
    // routines.ts declares it; the schema generator neither writes nor compares a SET clause, so the
    // migrations keep it by hand (Migration20261206105700_durable_expect_search_path).
    const fns = (
      await db.admin(
        `select p.proname as name, p.proconfig as config from pg_proc p join pg_namespace n on n.oid = p.pronamespace
          where n.nspname = 'public' and p.prorettype <> 'trigger'::regtype order by 1`,
      )
    ).rows;
    expect(fns).toEqual([{ name: 'durable_expect', config: ['search_path=pg_catalog, public, pg_temp'] }]);
    // It still raises DX001 with its message, and returns true otherwise.
    expect((await db.admin(`select durable_expect(true, 'never') as ok`)).rows).toEqual([{ ok: true }]);
    await expect(db.admin(`select durable_expect(false, 'run moved on')`)).rejects.toMatchObject({ code: 'DX001', message: 'run moved on' });
  });
});

/** `npm run db:check` against `target` (its entry, with only the environment it needs): its exit code and output. */
function dbCheck(target: TestDatabase): Promise<{ code: number; out: string }> {
  const root = fileURLToPath(new URL('../..', import.meta.url));
  const env = { PATH: process.env.PATH ?? '', NODE_ENV: 'development', JWT_SECRET: TEST_JWT_SECRET, OTEL_SDK_DISABLED: 'true', DATABASE_URL: target.appUrl, MIGRATION_DATABASE_URL: target.ownerUrl };
  return new Promise((resolve) => {
    execFile(process.execPath, ['src/cli/db.ts', 'check'], { cwd: root, env, timeout: 90_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: unknown }).code as number) : 0, out: `${stdout}${stderr}` });
    });
  });
}

describe('npm run db:check', () => {
  it('fails on a function of the schema recreated without its search_path, or with one that does not end in pg_temp, naming the SQL that fixes it; passes once it is fixed', { timeout: 300_000 }, async () => {
    const target = await createTestDatabase();
    try {
      expect(await dbCheck(target)).toEqual({ code: 0, out: 'schema matches the entities; no pending migrations\n' });
      // A CREATE OR REPLACE of a trigger function written without the clause (as the schema generator writes
      // one): the same body, so the schema diff is empty, and the setting reset.
      const [{ def }] = (await target.owner(`select pg_get_functiondef('approval_policy_changes_four_eyes_fn()'::regprocedure) as def`)).rows;
      const without = (def as string).replace(/^ SET search_path TO .*\n/m, '');
      expect(without).not.toBe(def);
      await target.owner(without);
      // And durable_expect with a path that searches the temporary schema first.
      await target.owner(`alter function durable_expect(boolean, text) set search_path = pg_temp, public`);
      const failed = await dbCheck(target);
      expect(failed.code, failed.out).toBe(1);
      const fixes = failed.out.split('\n').filter((l) => l.startsWith('alter function'));
      expect(fixes).toEqual([
        'alter function approval_policy_changes_four_eyes_fn() set search_path = pg_catalog, public, pg_temp;',
        'alter function durable_expect(boolean,text) set search_path = pg_catalog, public, pg_temp;',
      ]);
      expect(failed.out).not.toMatch(/create|drop/i);
      for (const fix of fixes) await target.owner(fix);
      expect(await dbCheck(target)).toEqual({ code: 0, out: 'schema matches the entities; no pending migrations\n' });
    } finally {
      await target.drop();
    }
  });
});
