import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes, randomUUID } from 'node:crypto';
import pg from 'pg';
import { formatFindings, inspectCatalog, pgCatalogQuery, type CatalogReport } from '../../src/platform/db/catalog.ts';
import { createOrm, type MikroORM } from '../../src/platform/db/orm.ts';
import { catalogRows } from '../../src/readiness/database.checks.ts';
import { migrate } from '../../src/platform/db/migrate.ts';
import { tenantTables } from '../../src/platform/db/tenant-owned.ts';
import { parseConfig } from '../../src/platform/config/config.ts';
import { entities } from '../../src/entities.ts';
import { createTestDatabase, seedRun, type TestDatabase } from '../helpers/db.ts';
import { TEST_ADMIN_URL, TEST_APP, TEST_JWT_SECRET, pgUrl } from '../helpers/env.ts';

/**
 * Proves the RLS suite bites: each case breaks one invariant in a throwaway database (as the
 * superuser) and the catalog inspection must fail, naming the table or role. Cluster-wide changes
 * go to a temporary clone of the application role, never to dealix_app itself.
 */

let declared: string[];
const databases: TestDatabase[] = [];
const tempRoles: string[] = [];

beforeAll(async () => {
  // Metadata only: the ORM never connects here.
  const orm: MikroORM = await createOrm(parseConfig({ JWT_SECRET: TEST_JWT_SECRET }), { entities });
  declared = tenantTables(orm);
  await orm.close(true);
  expect(declared).toContain('durable_runs');
});

// Each test's databases are dropped as it ends: DROP DATABASE waits for a checkpoint, and some fifty of
// them dropped at once in afterAll outlasted its hook timeout on a loaded CI machine (each hook here
// drops one or two).
afterEach(async () => {
  for (let db = databases.pop(); db; db = databases.pop()) await db.drop();
});

afterAll(async () => {
  // Roles are cluster-wide: drop the clones once the databases holding their grants are gone.
  const c = new pg.Client({ connectionString: TEST_ADMIN_URL });
  await c.connect();
  for (const role of tempRoles) await c.query(`DROP ROLE IF EXISTS ${role}`);
  await c.end();
});

async function freshDatabase(): Promise<TestDatabase> {
  const db = await createTestDatabase();
  databases.push(db);
  return db;
}

async function inspect(db: TestDatabase, appRole = TEST_APP.user): Promise<CatalogReport> {
  const client = new pg.Client({ connectionString: db.appUrl });
  await client.connect();
  try {
    return await inspectCatalog(pgCatalogQuery(client), { declaredTables: declared, appRole });
  } finally {
    await client.end();
  }
}

function failuresOf(report: CatalogReport, check: string) {
  return report.failures.filter((f) => f.check === check);
}

describe('the catalog check fails when tenancy is broken', () => {
  it('passes on an untouched database (the baseline the mutations break)', async () => {
    const report = await inspect(await freshDatabase());
    expect(report.failures, formatFindings(report.failures)).toEqual([]);
    expect(report.ok).toBe(true);
  });

  it('names the table whose isolation policy was dropped', async () => {
    const db = await freshDatabase();
    await db.admin('DROP POLICY partner_dossiers_tenant_isolation ON partner_dossiers');
    const report = await inspect(db);
    expect(report.ok).toBe(false);
    expect(failuresOf(report, 'tenant-policy').map((f) => f.subject)).toEqual(['table partner_dossiers']);
    expect(failuresOf(report, 'tenant-policy')[0]!.reason).toMatch(/partner_dossiers has no permissive policy/);
  });

  it('names the table whose FORCE ROW LEVEL SECURITY was removed', async () => {
    const db = await freshDatabase();
    await db.admin('ALTER TABLE durable_runs NO FORCE ROW LEVEL SECURITY');
    const report = await inspect(db);
    expect(report.failures.map((f) => `${f.check} ${f.subject}`)).toEqual(['rls-forced table durable_runs']);
  });

  it('names the table whose row-level security was disabled', async () => {
    const db = await freshDatabase();
    await db.admin('ALTER TABLE evidence_packs DISABLE ROW LEVEL SECURITY');
    const report = await inspect(db);
    expect(failuresOf(report, 'rls-enabled').map((f) => f.subject)).toEqual(['table evidence_packs']);
  });

  it('names a policy that lacks WITH CHECK, and one that widens reads to everyone', async () => {
    const db = await freshDatabase();
    await db.admin(`DROP POLICY economics_models_tenant_isolation ON economics_models;
      CREATE POLICY economics_models_tenant_isolation ON economics_models
        USING (tenant_id = (SELECT nullif(current_setting('app.tenant_id', true), '')::uuid))`);
    await db.admin('CREATE POLICY approval_requests_peek ON approval_requests FOR SELECT USING (true)');
    const report = await inspect(db);
    expect(failuresOf(report, 'tenant-policy').map((f) => f.subject)).toEqual(['table economics_models']);
    expect(failuresOf(report, 'extra-policy').map((f) => f.subject)).toEqual(['table approval_requests']);
    expect(failuresOf(report, 'extra-policy')[0]!.reason).toMatch(/approval_requests_peek/);
  });

  it('names a system-role policy that writes, while SELECT/DELETE-only system policies pass', async () => {
    const db = await freshDatabase();
    await db.admin('CREATE POLICY durable_runs_system_write ON durable_runs FOR UPDATE TO dealix_system USING (true)');
    const report = await inspect(db);
    expect(report.failures.map((f) => `${f.check} ${f.subject}`)).toEqual(['extra-policy table durable_runs']);
    expect(report.failures[0]!.reason).toMatch(/durable_runs_system_write/);
  });

  it('names an operator role granted beyond tenant_limits, and an operator policy on another table or that writes, while its own read policy passes', async () => {
    const db = await freshDatabase();
    await db.admin('GRANT SELECT, DELETE ON durable_runs TO dealix_operator');
    await db.admin('CREATE POLICY durable_runs_operator_read ON durable_runs FOR SELECT TO dealix_operator USING (true)');
    await db.admin('CREATE POLICY tenant_limits_operator_write ON tenant_limits FOR UPDATE TO dealix_operator USING (true)');
    const report = await inspect(db);
    expect(report.failures.map((f) => `${f.check} ${f.subject}`).sort()).toEqual(['extra-policy table durable_runs', 'extra-policy table tenant_limits', 'role-privilege role dealix_operator']);
    expect(failuresOf(report, 'role-privilege')[0]!.reason).toMatch(/durable_runs: DELETE; durable_runs: SELECT$/);
    expect(failuresOf(report, 'extra-policy').find((f) => f.subject === 'table tenant_limits')!.reason).toMatch(/tenant_limits_operator_write/);
  });

  it('names a unique key without tenant_id, and a table whose tenant_id is not indexed', async () => {
    const db = await freshDatabase();
    await db.admin('ALTER TABLE evidence_packs ADD CONSTRAINT evidence_packs_sha_unique UNIQUE (sha256)');
    await db.admin('ALTER TABLE approval_decisions DROP CONSTRAINT approval_decisions_pkey');
    const report = await inspect(db);
    expect(failuresOf(report, 'tenant-unique').map((f) => f.subject)).toEqual(['table evidence_packs']);
    expect(failuresOf(report, 'tenant-unique')[0]!.reason).toMatch(/evidence_packs_sha_unique/);
    expect(failuresOf(report, 'tenant-index').map((f) => f.subject)).toEqual(['table approval_decisions']);
  });

  it('names a primary key without tenant_id other than the surrogate id: a natural primary key tells another tenant which values are used, as any unique key does', async () => {
    const db = await freshDatabase();
    await db.admin('ALTER TABLE partner_dossiers DROP CONSTRAINT partner_dossiers_pkey');
    await db.admin('ALTER TABLE partner_dossiers ADD CONSTRAINT partner_dossiers_pkey PRIMARY KEY (run_id)');
    const report = await inspect(db);
    expect(failuresOf(report, 'tenant-unique').map((f) => f.subject)).toEqual(['table partner_dossiers']);
    expect(failuresOf(report, 'tenant-unique')[0]!.reason).toMatch(/partner_dossiers_pkey on partner_dossiers \(run_id\)/);
  });

  it('names a table added by hand with tenant_id but no row-level security, though the ORM does not know it', async () => {
    const db = await freshDatabase();
    await db.admin('CREATE TABLE shadow_notes (id uuid primary key, tenant_id uuid not null, body text)');
    const report = await inspect(db);
    const shadow = report.failures.filter((f) => f.subject === 'table shadow_notes').map((f) => f.check);
    expect(shadow).toEqual(expect.arrayContaining(['rls-enabled', 'rls-forced', 'tenant-policy', 'tenant-index']));
    expect(report.tables.find((t) => t.table === 'shadow_notes')?.declared).toBe(false);
  });

  it('names a table without tenant_id that the application role may read or write, which indeed shares its rows across tenants', async () => {
    const db = await freshDatabase();
    // A migration that adds a shared table and grants it to the app (directly, or to PUBLIC) leaves
    // no row-level security to scope it: every tenant reads every row, with or without a context.
    await db.admin(`CREATE TABLE shared_notes (id uuid primary key, body text); GRANT SELECT, INSERT ON shared_notes TO ${TEST_APP.user}`);
    await db.admin(`CREATE TABLE public_notes (id uuid primary key); GRANT SELECT ON public_notes TO PUBLIC`);
    await db.admin(`INSERT INTO shared_notes VALUES (gen_random_uuid(), 'written under tenant A')`);
    const app = new pg.Client({ connectionString: db.appUrl });
    await app.connect();
    await app.query('begin');
    await app.query(`select set_config('app.tenant_id', $1, true)`, [randomUUID()]);
    const seen = (await app.query('SELECT count(*)::int AS n FROM shared_notes')).rows[0].n;
    await app.query('commit');
    await app.end();
    expect(seen).toBe(1); // another tenant's context, yet the row
    const report = await inspect(db);
    const untenanted = report.failures.filter((f) => f.check === 'role-untenanted');
    // PUBLIC's grant is every role's: the system and operator roles' too.
    expect(untenanted.map((f) => f.subject)).toEqual([`role ${TEST_APP.user}`, 'role dealix_system', 'role dealix_operator']);
    expect(untenanted[0]!.reason).toMatch(/: public_notes: SELECT; shared_notes: INSERT; shared_notes: SELECT$/);
    expect(untenanted[1]!.reason).toMatch(/: public_notes: SELECT$/);
    expect(untenanted[2]!.reason).toMatch(/: public_notes: SELECT$/);
    // The migrations table, which the app reads for /readyz, is the one exception (the baseline above passes).
    expect(untenanted[0]!.reason).not.toMatch(/mikro_orm_migrations/);
  });

  it('names a view the application can read that runs with its owner\'s rights, and which indeed leaks rows', async () => {
    const db = await freshDatabase();
    await db.admin(`INSERT INTO partner_dossiers (id, tenant_id, run_id, partner_name, country, completeness_score, content, created_at)
      VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'Acme', 'SA', 1, '{}', now())`);
    await db.admin(`CREATE VIEW all_partners AS SELECT tenant_id, partner_name FROM partner_dossiers; GRANT SELECT ON all_partners TO ${TEST_APP.user}`);
    const app = new pg.Client({ connectionString: db.appUrl });
    await app.connect();
    const leaked = (await app.query('SELECT count(*)::int AS n FROM all_partners')).rows[0].n;
    await app.end();
    expect(leaked).toBe(1); // no tenant context, yet a row: the view runs as its (superuser) owner
    const report = await inspect(db);
    expect(report.failures.map((f) => `${f.check} ${f.subject}`)).toEqual(['view-security-invoker view all_partners']);
  });

  it("reports a SECURITY DEFINER function the application may call, and one a trigger runs on its writes though EXECUTE is revoked from it — which indeed reads every tenant's rows", async () => {
    const db = await freshDatabase();
    const dossier = `INSERT INTO partner_dossiers (id, tenant_id, run_id, partner_name, country, completeness_score, content, created_at)
      VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'Acme', 'SA', 1, '{}', now())`;
    await db.admin(`${dossier}; ${dossier}`);
    await db.admin(`CREATE FUNCTION count_dossiers() RETURNS bigint SECURITY DEFINER LANGUAGE sql AS 'SELECT count(*) FROM partner_dossiers'`);
    // Revoking EXECUTE is the usual hardening of a definer function; a trigger runs it all the same.
    await db.admin(`CREATE FUNCTION dossiers_seen() RETURNS trigger SECURITY DEFINER LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'dossiers seen: %', (SELECT count(*) FROM partner_dossiers); END $$;
      REVOKE EXECUTE ON FUNCTION dossiers_seen() FROM PUBLIC;
      CREATE TRIGGER seen BEFORE INSERT ON economics_models FOR EACH ROW EXECUTE FUNCTION dossiers_seen()`);
    const app = new pg.Client({ connectionString: db.appUrl });
    await app.connect();
    try {
      expect(await app.query('SELECT dossiers_seen()').catch((e: Error) => e.message)).toMatch(/permission denied/);
      await app.query('BEGIN');
      await app.query(`SELECT set_config('app.tenant_id', $1, true)`, [randomUUID()]);
      // A tenant with no dossier of its own writes, and the trigger, run as its (superuser) owner, sees both tenants' dossiers.
      await expect(app.query(`INSERT INTO economics_models (tenant_id) VALUES (current_setting('app.tenant_id')::uuid)`)).rejects.toThrow('dossiers seen: 2');
    } finally {
      await app.end();
    }
    const report = await inspect(db);
    const definers = report.findings.filter((f) => f.check === 'security-definer');
    expect(definers.map((f) => f.subject).sort()).toEqual(['function count_dossiers()', 'function dossiers_seen()']);
    expect(definers.find((f) => f.subject === 'function dossiers_seen()')!.reason).toMatch(/by writing economics_models \(a trigger\)/);
    // Errors, not notes for review: none is on the allow-list (SECURITY_DEFINER_ALLOWED, empty), so the readiness row fails, naming both.
    expect(definers.map((f) => f.severity)).toEqual(['error', 'error']);
    const row = catalogRows(report, TEST_APP.user).find((r) => r.component === 'views-functions')!;
    expect(row.status).toBe('FAIL');
    expect(row.reason).toMatch(/count_dossiers\(\).*dossiers_seen\(\)|dossiers_seen\(\).*count_dossiers\(\)/);
  });

  it("reports a SECURITY DEFINER trigger function kept in a schema the application cannot use: a trigger on a table it writes runs it all the same", async () => {
    const db = await freshDatabase();
    await db.admin(`CREATE SCHEMA private; REVOKE ALL ON SCHEMA private FROM PUBLIC;
      CREATE FUNCTION private.dossiers_seen() RETURNS trigger SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'dossiers seen: %', (SELECT count(*) FROM public.partner_dossiers); END $$;
      CREATE TRIGGER seen BEFORE INSERT ON economics_models FOR EACH ROW EXECUTE FUNCTION private.dossiers_seen()`);
    const app = new pg.Client({ connectionString: db.appUrl });
    await app.connect();
    try {
      await app.query('BEGIN');
      await app.query(`SELECT set_config('app.tenant_id', $1, true)`, [randomUUID()]);
      // No USAGE on schema private, yet the application's write runs the function as its owner.
      await expect(app.query(`INSERT INTO economics_models (tenant_id) VALUES (current_setting('app.tenant_id')::uuid)`)).rejects.toThrow('dossiers seen: 0');
    } finally {
      await app.end();
    }
    const report = await inspect(db);
    expect(report.failures.map((f) => `${f.check} ${f.subject}`)).toEqual(['security-definer function private.dossiers_seen()']);
    expect(report.failures[0]!.reason).toMatch(/by writing economics_models \(a trigger\)/);
  });

  it("names a rewrite rule on a table the application writes — it runs as the table's owner, and indeed copies every tenant's run ids into the writer's own rows", async () => {
    const db = await freshDatabase();
    const [a, b] = [randomUUID(), randomUUID()];
    for (const tenant of [a, b]) {
      await db.admin(`INSERT INTO durable_runs (id, tenant_id, workflow, workflow_version, status, input, sequence_num, step_count, idempotency_hash, correlation_id, principal, created_at, updated_at)
        VALUES (gen_random_uuid(), $1, 'golden-path', 1, 'completed', '{}', 0, 1, md5(random()::text), 'c', 'p', now(), now())`, [tenant]);
    }
    // A rule has no owner of its own: its actions run with the rights of its table's owner, who (a member
    // of the system role) reads every tenant's durable_runs. The copy lands in the writer's own tenant, so WITH CHECK passes.
    await db.admin(`CREATE RULE copy_runs AS ON INSERT TO economics_models DO ALSO
      INSERT INTO partner_dossiers (id, tenant_id, run_id, partner_name, country, completeness_score, content, created_at)
      SELECT gen_random_uuid(), NEW.tenant_id, gen_random_uuid(), (SELECT string_agg(tenant_id::text, ',') FROM durable_runs), 'SA', 1, '{}', now()`);
    const app = new pg.Client({ connectionString: db.appUrl });
    await app.connect();
    try {
      const c = randomUUID();
      await app.query('BEGIN');
      await app.query(`SELECT set_config('app.tenant_id', $1, true)`, [c]);
      await app.query(`INSERT INTO economics_models (id, tenant_id, run_id, cost, payback_months, currency, content, created_at) VALUES (gen_random_uuid(), $1, gen_random_uuid(), 1, 1, 'SAR', '{}', now())`, [c]);
      const { rows } = await app.query(`SELECT partner_name FROM partner_dossiers`);
      await app.query('ROLLBACK');
      expect(rows[0].partner_name.split(',').sort()).toEqual([a, b].sort());
    } finally {
      await app.end();
    }
    const report = await inspect(db);
    expect(report.failures.map((f) => `${f.check} ${f.subject}`)).toEqual(['rewrite-rule rule copy_runs on economics_models']);
  });

  it("names a tenant table's column that draws from a sequence, which indeed tells one tenant another's inserts, and a sequence the application may use", async () => {
    const db = await freshDatabase();
    await db.admin(`ALTER TABLE partner_dossiers ADD COLUMN n bigint GENERATED ALWAYS AS IDENTITY`);
    await db.admin(`CREATE SEQUENCE shared_counter; GRANT USAGE ON SEQUENCE shared_counter TO ${TEST_APP.user}`);
    const drawn: number[] = [];
    for (const tenant of [randomUUID(), randomUUID(), randomUUID()]) {
      const app = new pg.Client({ connectionString: db.appUrl });
      await app.connect();
      try {
        await app.query('BEGIN');
        await app.query(`SELECT set_config('app.tenant_id', $1, true)`, [tenant]);
        const { rows } = await app.query(`INSERT INTO partner_dossiers (id, tenant_id, run_id, partner_name, country, completeness_score, content, created_at)
          VALUES (gen_random_uuid(), $1, gen_random_uuid(), 'Acme', 'SA', 1, '{}', now()) RETURNING n`, [tenant]);
        await app.query('COMMIT');
        drawn.push(Number(rows[0].n));
      } finally {
        await app.end();
      }
    }
    // Each tenant sees only its own row, yet the third learns that two rows were inserted before its own.
    expect(drawn).toEqual([1, 2, 3]);
    const report = await inspect(db);
    expect(report.failures.map((f) => `${f.check} ${f.subject}`).sort()).toEqual(['tenant-sequence sequence shared_counter', 'tenant-sequence table partner_dossiers']);
    expect(report.failures.find((f) => f.subject === 'table partner_dossiers')!.reason).toMatch(/column partner_dossiers\.n draws from a sequence every tenant shares/);
  });

  it('names an application role that can truncate, owns a table, or can SET ROLE to the owner', async () => {
    const db = await freshDatabase();
    const clone = await cloneAppRole(db);
    await db.admin(`GRANT TRUNCATE ON partner_dossiers TO ${clone}`);
    await db.admin(`CREATE TABLE clone_owned (id int); ALTER TABLE clone_owned OWNER TO ${clone}`);
    await db.admin(`GRANT dealix_owner TO ${clone}`);
    const report = await inspect(db, clone);
    const subjects = report.failures.filter((f) => f.subject === `role ${clone}`);
    expect(subjects.map((f) => f.check)).toEqual(expect.arrayContaining(['role-privilege', 'role-owns']));
    expect(subjects.find((f) => f.check === 'role-privilege')!.reason).toMatch(/partner_dossiers: TRUNCATE/);
    expect(subjects.find((f) => f.reason.startsWith(`${clone} can SET ROLE dealix_owner`) && f.check === 'role-owns')).toBeDefined();
  });

  it('names an application role with BYPASSRLS, which indeed reads every tenant without a context', async () => {
    const db = await freshDatabase();
    const clone = await cloneAppRole(db);
    const tenant = randomUUID();
    await db.admin(
      `INSERT INTO evidence_packs (id, tenant_id, run_id, content, sha256, created_at) VALUES ($1, $2, $3, '{}', 'x', now())`,
      [randomUUID(), tenant, await seedRun(db, tenant)],
    );
    const count = () => countAs(db, clone, 'evidence_packs');
    expect(await count()).toBe(0); // the clone behaves like the app role: no context, no rows
    expect((await inspect(db, clone)).ok).toBe(true);

    await db.admin(`ALTER ROLE ${clone} BYPASSRLS`);
    expect(await count()).toBe(1);
    const report = await inspect(db, clone);
    expect(report.failures.map((f) => `${f.check} ${f.subject}`)).toEqual([`role-bypassrls role ${clone}`]);
    expect(report.failures[0]!.reason).toBe(`${clone} is BYPASSRLS: it ignores every policy`);
  });

  it('names an application role that holds the system role\'s privileges without SET ROLE, which indeed reads every tenant\'s runs', async () => {
    const db = await freshDatabase();
    const clone = await cloneAppRole(db);
    await db.admin(
      `INSERT INTO durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, correlation_id, sequence_num, step_count, created_at, updated_at)
       VALUES ($1, $2, 'golden-path', 1, 'h', 'pending', 'u', '{}', 'c', 0, 4, now(), now())`,
      [randomUUID(), randomUUID()],
    );
    await db.admin(`GRANT dealix_system TO ${clone}`);
    const runs = () => countAs(db, clone, 'durable_runs');
    expect(await runs()).toBe(0); // a member, NOINHERIT: only SET ROLE would give it the system role's rows
    expect((await inspect(db, clone)).ok).toBe(true);

    await db.admin(`ALTER ROLE ${clone} INHERIT`);
    expect(await runs()).toBe(1);
    const report = await inspect(db, clone);
    // And what it inherits is its own: the system role's DELETE of runs, which the application role never holds.
    expect(report.failures.map((f) => `${f.check} ${f.subject}`)).toEqual([`role-inherits role ${clone}`, `role-privilege role ${clone}`]);
    expect(report.failures[0]!.reason).toMatch(/holds the privileges of dealix_system without SET ROLE/);
    expect(report.failures[1]!.reason).toMatch(/: durable_runs: DELETE;/);
  });

  it("names an application role that is a member of PostgreSQL's pg_execute_server_program, which indeed runs a program on the server as the postgres OS user", async () => {
    const db = await freshDatabase();
    const clone = await cloneAppRole(db);
    const c = new pg.Client({ connectionString: pgUrl({ user: clone, password: clone }, db.name) });
    const copyToProgram = async () => {
      await c.query('BEGIN');
      try {
        await c.query('SET LOCAL ROLE pg_execute_server_program');
        await c.query(`COPY (SELECT 1) TO PROGRAM 'cat > /dev/null'`);
        return 'ran';
      } catch (err) {
        return (err as { code?: string }).code ?? String(err);
      } finally {
        await c.query('ROLLBACK');
      }
    };
    await c.connect();
    try {
      expect(await copyToProgram()).toBe('42501'); // not a member: SET ROLE is refused
      expect((await inspect(db, clone)).ok).toBe(true);
      // A DBA's grant, or one an older cluster kept: the role holds no table privilege, so nothing else names it.
      await db.admin(`GRANT pg_execute_server_program TO ${clone}`);
      expect(await copyToProgram()).toBe('ran');
    } finally {
      await c.end();
    }
    const report = await inspect(db, clone);
    expect(report.failures.map((f) => `${f.check} ${f.subject}`)).toEqual([`role-member role ${clone}`]);
    expect(report.failures[0]!.reason).toMatch(new RegExp(`^${clone} is a member of pg_execute_server_program`));
    const row = catalogRows(report, clone).find((r) => r.component === 'app-role')!;
    expect(row.status).toBe('FAIL');
  });

  it.each([
    ['pg_read_server_files'],
    ['pg_write_server_files'],
    ['pg_read_all_data'],
    ['pg_write_all_data'],
    ['pg_monitor'],
    ['pg_read_all_stats'],
    ['pg_signal_backend'],
  ])("names an application role that is a member of PostgreSQL's %s", async (builtin) => {
    const db = await freshDatabase();
    const clone = await cloneAppRole(db);
    await db.admin(`GRANT ${builtin} TO ${clone}`);
    const failures = (await inspect(db, clone)).failures.filter((f) => f.check === 'role-member');
    expect(failures.map((f) => f.subject)).toEqual([`role ${clone}`]);
    expect(failures[0]!.reason).toMatch(new RegExp(`^${clone} is a member of ${builtin}\\b`));
  });

  it.each([
    ['REPLICATION', 'role-replication'],
    ['CREATEROLE', 'role-createrole'],
    ['CREATEDB', 'role-createdb'],
  ])('names an application role with %s', async (attribute, check) => {
    const db = await freshDatabase();
    const clone = await cloneAppRole(db);
    await db.admin(`ALTER ROLE ${clone} ${attribute}`);
    const report = await inspect(db, clone);
    expect(report.failures.map((f) => `${f.check} ${f.subject}`)).toEqual([`${check} role ${clone}`]);
    expect(catalogRows(report, clone).find((r) => r.component === 'app-role')!.status).toBe('FAIL');
  });

  it("names a schema besides public that the application role may use — where an owner's view indeed returns every tenant's runs, unseen by the checks of public", async () => {
    const db = await freshDatabase();
    for (const tenant of [randomUUID(), randomUUID()]) await seedRun(db, tenant);
    // A migration (run as the owner) that adds a reporting schema: the owner reads every tenant's runs (the system role's sweep policy, which it inherits).
    await db.owner(`CREATE SCHEMA reports; CREATE VIEW reports.runs AS SELECT tenant_id, id, input FROM public.durable_runs;
      GRANT USAGE ON SCHEMA reports TO ${TEST_APP.user}; GRANT SELECT ON reports.runs TO ${TEST_APP.user}`);
    const app = new pg.Client({ connectionString: db.appUrl });
    await app.connect();
    try {
      await app.query('BEGIN');
      await app.query(`SELECT set_config('app.tenant_id', $1, true)`, [randomUUID()]);
      expect((await app.query('SELECT count(DISTINCT tenant_id)::int AS n FROM reports.runs')).rows[0].n).toBe(2); // another tenant's context, yet both tenants' runs
      await app.query('ROLLBACK');
    } finally {
      await app.end();
    }
    const report = await inspect(db);
    expect(report.failures.map((f) => `${f.check} ${f.subject}`)).toEqual([`role-schema role ${TEST_APP.user}`]);
    expect(report.failures[0]!.reason).toMatch(/may use schema reports/);
    // USAGE and SELECT through PUBLIC are every role's: the system and operator roles are named too.
    await db.owner(`REVOKE ALL ON SCHEMA reports FROM ${TEST_APP.user}; GRANT USAGE ON SCHEMA reports TO PUBLIC; GRANT SELECT ON reports.runs TO PUBLIC`);
    expect((await inspect(db)).failures.map((f) => `${f.check} ${f.subject}`)).toEqual([`role-schema role ${TEST_APP.user}`, 'role-schema role dealix_system', 'role-schema role dealix_operator']);
    await db.owner('REVOKE USAGE ON SCHEMA reports FROM PUBLIC');
    expect((await inspect(db)).failures).toEqual([]);
  });

  it("passes a provider's extension schema that every role may use (Heroku's heroku_ext), and one where the roles reach nothing — until the owner puts a function there, or the application may create there", async () => {
    const db = await freshDatabase();
    // As Heroku Postgres makes every database: heroku_ext, USAGE for PUBLIC, extensions installed into it.
    // pg_stat_statements brings a view PUBLIC may read and functions it may execute: the extension's, not the owner's.
    await db.admin(`CREATE SCHEMA heroku_ext; GRANT USAGE ON SCHEMA heroku_ext TO PUBLIC; CREATE EXTENSION pg_stat_statements WITH SCHEMA heroku_ext;
      CREATE SCHEMA empty_ext; GRANT USAGE ON SCHEMA empty_ext TO PUBLIC`);
    expect((await inspect(db)).failures).toEqual([]);
    // A function there that is no extension's runs as its owner for any role (EXECUTE is PUBLIC's by default); the checks of public never see it.
    await db.admin(`CREATE FUNCTION heroku_ext.count_runs() RETURNS bigint SECURITY DEFINER LANGUAGE sql AS 'SELECT count(*) FROM public.durable_runs'`);
    const report = await inspect(db);
    expect(report.failures.map((f) => `${f.check} ${f.subject}`)).toEqual([`role-schema role ${TEST_APP.user}`, 'role-schema role dealix_system', 'role-schema role dealix_operator']);
    expect(report.failures[0]!.reason).toContain('may use schema heroku_ext (function heroku_ext.count_runs())');
    await db.admin(`DROP FUNCTION heroku_ext.count_runs(); GRANT CREATE ON SCHEMA empty_ext TO ${TEST_APP.user}`);
    const created = await inspect(db);
    expect(created.failures.map((f) => `${f.check} ${f.subject}`)).toEqual([`role-schema role ${TEST_APP.user}`]);
    expect(created.failures[0]!.reason).toContain('may use schema empty_ext (CREATE)');
  });

  it('names a superuser application role', async () => {
    const db = await freshDatabase();
    const clone = await cloneAppRole(db);
    await db.admin(`ALTER ROLE ${clone} SUPERUSER`);
    const report = await inspect(db, clone);
    expect(report.failures.map((f) => `${f.check} ${f.subject}`)).toContain(`role-superuser role ${clone}`);
  });
});

describe('the catalog compares each role\'s privileges with roles.ts, one grant made by hand at a time', () => {
  /** The failures of a fresh migrated database after `sql`, run as its owner (a hand-made grant after db:migrate). */
  async function failuresAfter(sql: string, role = TEST_APP.user): Promise<string[]> {
    const db = await freshDatabase();
    await db.owner(sql);
    const report = await inspect(db, role);
    return report.failures.map((f) => `${f.check} ${f.subject}: ${f.reason}`);
  }

  // The system sweep policy shows the system role every tenant's runs, which the application role reaches by SET ROLE:
  // a wider read there is every tenant's input, output and principal (ADR 0003 grants their columns, never these).
  it.each([
    ['GRANT SELECT ON durable_runs TO dealix_system', /durable_runs: SELECT \(.*\binput\b.*\)/],
    ['GRANT SELECT (payload) ON webhook_deliveries TO dealix_system', /: webhook_deliveries: SELECT \(payload\);/],
    ['GRANT SELECT (content) ON evidence_packs TO dealix_system', /evidence_packs: SELECT \(content\)/],
    ['GRANT DELETE ON evidence_packs TO dealix_system', /evidence_packs: DELETE/],
  ])('names the system role after %s', async (sql, named) => {
    const failures = await failuresAfter(sql);
    expect(failures).toHaveLength(1);
    expect(failures[0]).toMatch(/^role-privilege role dealix_system: /);
    expect(failures[0]).toMatch(named);
  });

  it.each([
    ['GRANT DELETE ON durable_runs TO dealix_app', /durable_runs: DELETE/],
    ['GRANT UPDATE ON evidence_packs TO dealix_app', /evidence_packs: UPDATE(;|$)/],
    ['GRANT DELETE ON evidence_packs TO dealix_app', /evidence_packs: DELETE/],
    ['GRANT UPDATE ON evidence_seals TO dealix_app', /evidence_seals: UPDATE/],
    ['GRANT DELETE ON evidence_seals TO dealix_app', /evidence_seals: DELETE/],
    ['GRANT UPDATE (content) ON partner_dossiers TO dealix_app', /partner_dossiers: UPDATE \(content\)/],
    ['GRANT DELETE ON partner_dossiers TO dealix_app', /partner_dossiers: DELETE/],
    ['GRANT UPDATE ON approval_decisions TO dealix_app', /approval_decisions: UPDATE/],
    ['GRANT DELETE ON approval_decisions TO dealix_app', /approval_decisions: DELETE/],
    ['GRANT INSERT ON tenant_limits TO dealix_app', /tenant_limits: INSERT/],
    ['GRANT UPDATE (max_active_runs) ON tenant_limits TO dealix_app', /tenant_limits: UPDATE \(max_active_runs\)/],
    ['GRANT INSERT ON token_revocations TO dealix_app', /token_revocations: INSERT/],
    ['GRANT UPDATE ON token_revocations TO dealix_app', /token_revocations: UPDATE/],
    ['GRANT DELETE ON token_revocations TO PUBLIC', /token_revocations: DELETE/],
  ])('names the application role after %s', async (sql, named) => {
    const failures = (await failuresAfter(sql)).filter((f) => f.includes(`role ${TEST_APP.user}:`));
    expect(failures).toHaveLength(1);
    expect(failures[0]).toMatch(new RegExp(`^role-privilege role ${TEST_APP.user}: ${TEST_APP.user} holds privileges its code never uses`));
    expect(failures[0]).toMatch(named);
  });

  it.each([
    ['REVOKE SELECT ON evidence_packs FROM dealix_app', 'evidence_packs: SELECT'],
    ['REVOKE INSERT ON durable_checkpoints FROM dealix_app', 'durable_checkpoints: INSERT'],
    ['REVOKE UPDATE (status) ON durable_runs FROM dealix_app', 'durable_runs: UPDATE (status)'],
    ['REVOKE DELETE ON webhook_endpoints FROM dealix_app', 'webhook_endpoints: DELETE'],
    ['REVOKE SELECT ON mikro_orm_migrations FROM dealix_app', 'mikro_orm_migrations: SELECT'],
  ])('names a privilege the application role lacks after %s', async (sql, named) => {
    const failures = await failuresAfter(sql);
    expect(failures).toEqual([`role-grants role ${TEST_APP.user}: ${TEST_APP.user} lacks privileges its code uses (roles.ts): ${named}; run \`npm run db:migrate\` (it applies the grants on every run, even with no migration pending)`]);
  });

  it('names a further privilege the application role reaches by SET ROLE', async () => {
    const db = await freshDatabase();
    const clone = await cloneAppRole(db);
    const wide = `dealix_wide_${randomBytes(4).toString('hex')}`;
    tempRoles.push(wide);
    await db.admin(`CREATE ROLE ${wide} NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT; GRANT USAGE ON SCHEMA public TO ${wide}; GRANT ${wide} TO ${clone}`);
    // A membership outside dealix_system and dealix_operator fails even while the role holds nothing (ADR 0001 §2).
    expect((await inspect(db, clone)).failures.map((f) => `${f.check} ${f.subject}`), 'a role holding nothing').toEqual([`role-member role ${clone}`]);
    await db.owner(`GRANT DELETE ON evidence_packs TO ${wide}`);
    const failures = (await inspect(db, clone)).failures;
    expect(failures.map((f) => `${f.check} ${f.subject}`)).toEqual([`role-member role ${clone}`, `role-privilege role ${clone}`]);
    expect(failures[1]!.reason).toMatch(new RegExp(`^${clone} can SET ROLE ${wide}, which holds privileges the application role's code never uses .*evidence_packs: DELETE`));
  });

  it("names TEMP on the database, held by the application role or by PUBLIC (a database made outside db:setup): a temporary table shadows a table an unqualified name in a function means", async () => {
    const db = await freshDatabase();
    await db.owner(`GRANT TEMP ON DATABASE ${db.name} TO ${TEST_APP.user}`);
    const app = (await inspect(db)).failures;
    expect(app.map((f) => `${f.check} ${f.subject}`)).toEqual([`role-temp role ${TEST_APP.user}`]);
    expect(app[0]!.reason).toMatch(new RegExp(`${TEST_APP.user} may create temporary tables in database ${db.name}`));
    await db.owner(`REVOKE TEMP ON DATABASE ${db.name} FROM ${TEST_APP.user}; GRANT TEMP ON DATABASE ${db.name} TO PUBLIC`);
    // PUBLIC's grant is every role's: the system and operator roles', which the application role can become, too.
    const everyone = (await inspect(db)).failures;
    expect(everyone.map((f) => `${f.check} ${f.subject}`)).toEqual([`role-temp role ${TEST_APP.user}`, 'role-temp role dealix_system', 'role-temp role dealix_operator']);
    await db.owner(`REVOKE TEMP ON DATABASE ${db.name} FROM PUBLIC`);
    expect((await inspect(db)).failures).toEqual([]);
  });
});

describe('db:migrate converges privileges', () => {
  it('revokes what an earlier release granted beyond the list: TRUNCATE for the app, wider columns for the system role', async () => {
    const db = await freshDatabase();
    await db.admin(`GRANT TRUNCATE, TRIGGER ON durable_runs TO ${TEST_APP.user}; GRANT SELECT (input), UPDATE (status) ON durable_runs TO dealix_system`);
    const broken = await inspect(db);
    expect(broken.failures.map((f) => `${f.check} ${f.subject}`).sort()).toEqual([`role-privilege role ${TEST_APP.user}`, 'role-privilege role dealix_system']);
    // Each grant named for itself (the single-grant cases are above).
    expect(broken.failures.find((f) => f.subject === 'role dealix_system')!.reason).toMatch(/: durable_runs: SELECT \(input\); durable_runs: UPDATE \(status\);/);
    expect(broken.failures.find((f) => f.subject === `role ${TEST_APP.user}`)!.reason).toMatch(/: durable_runs: TRIGGER; durable_runs: TRUNCATE$/);

    const config = parseConfig({ JWT_SECRET: TEST_JWT_SECRET, DATABASE_URL: db.appUrl, MIGRATION_DATABASE_URL: db.ownerUrl });
    expect(await migrate(config, entities)).toEqual([]); // nothing pending: only the grants are re-applied
    const repaired = await inspect(db);
    expect(repaired.failures, formatFindings(repaired.failures)).toEqual([]);
    const input = await db.admin(`SELECT has_column_privilege('dealix_system', 'durable_runs', 'input', 'SELECT') AS input,
                                          has_column_privilege('dealix_system', 'durable_runs', 'status', 'SELECT') AS status`);
    expect(input.rows[0]).toEqual({ input: false, status: true });
  });

  it('revokes DELETE on approval_policy_changes that the previous release granted the app (ADR 0010: its record is kept), and keeps UPDATE (of its decision\'s columns)', async () => {
    const db = await freshDatabase();
    await db.admin(`GRANT DELETE ON approval_policy_changes TO ${TEST_APP.user}`);
    const config = parseConfig({ JWT_SECRET: TEST_JWT_SECRET, DATABASE_URL: db.appUrl, MIGRATION_DATABASE_URL: db.ownerUrl });
    expect(await migrate(config, entities)).toEqual([]); // nothing pending: only the grants are re-applied
    const privs = await db.admin(`SELECT has_table_privilege($1, 'approval_policy_changes', 'DELETE') AS delete,
                                         has_column_privilege($1, 'approval_policy_changes', 'status', 'UPDATE') AS update`, [TEST_APP.user]);
    expect(privs.rows[0]).toEqual({ delete: false, update: true });
  });

  it("a partner offboarding is never deleted, and updated only in what its steps move (status, settlement, settled_at, archived_at): as the application role the rest is refused (42501), after a migrate that found the table-wide grants of the release before", async () => {
    const db = await freshDatabase();
    await db.admin(`GRANT SELECT, INSERT, UPDATE, DELETE ON partner_offboardings TO ${TEST_APP.user}`);
    const config = parseConfig({ JWT_SECRET: TEST_JWT_SECRET, DATABASE_URL: db.appUrl, MIGRATION_DATABASE_URL: db.ownerUrl });
    expect(await migrate(config, entities)).toEqual([]); // nothing pending: only the grants are re-applied
    const tenant = randomUUID();
    const run = await seedRun(db, tenant);
    const id = randomUUID();
    await db.admin(
      `insert into partner_offboardings (id, tenant_id, run_id, partner_reference, partner_name, reason, status, frozen_at)
       values ($1, $2, $3, 'P-1', 'Partner One', 'compliance', 'frozen', now())`,
      [id, tenant, run],
    );
    const app = new pg.Client({ connectionString: db.appUrl });
    await app.connect();
    const asApp = async (sql: string): Promise<number | string> => {
      await app.query('BEGIN');
      try {
        await app.query(`select set_config('app.tenant_id', $1, true)`, [tenant]);
        const res = await app.query(sql, [id]);
        await app.query('COMMIT');
        return res.rowCount ?? 0;
      } catch (err) {
        await app.query('ROLLBACK');
        return (err as { code?: string }).code ?? String(err);
      }
    };
    try {
      expect(await asApp(`delete from partner_offboardings where id = $1`)).toBe('42501');
      for (const set of [`partner_reference = 'P-2'`, `partner_name = 'Other'`, `reason = 'inactive'`, `run_id = gen_random_uuid()`, 'frozen_at = now()', 'id = id', 'tenant_id = tenant_id']) {
        expect(await asApp(`update partner_offboardings set ${set} where id = $1`), set).toBe('42501');
      }
      // What the steps write (partner-offboarding.steps.ts): settle, archive, and a record given up.
      expect(await asApp(`update partner_offboardings set status = 'settled', settlement = '{"lines":[]}'::jsonb, settled_at = now() where id = $1`)).toBe(1);
      expect(await asApp(`update partner_offboardings set status = 'archived', archived_at = now() where id = $1`)).toBe(1);
      expect(await asApp(`update partner_offboardings set status = 'abandoned' where id = $1`)).toBe(1);
    } finally {
      await app.end();
    }
    const [row] = (await db.admin(`select partner_reference, partner_name, reason, status from partner_offboardings where id = $1`, [id])).rows;
    expect(row).toEqual({ partner_reference: 'P-1', partner_name: 'Partner One', reason: 'compliance', status: 'abandoned' });
  });

  it('revokes DELETE on approval_requests and approval_policies that earlier releases granted the app (retention deletes nothing of them; the app never does), and keeps UPDATE (of the columns the code writes, on approval_requests)', async () => {
    const db = await freshDatabase();
    await db.admin(`GRANT DELETE ON approval_requests, approval_policies TO ${TEST_APP.user}`);
    const config = parseConfig({ JWT_SECRET: TEST_JWT_SECRET, DATABASE_URL: db.appUrl, MIGRATION_DATABASE_URL: db.ownerUrl });
    expect(await migrate(config, entities)).toEqual([]); // nothing pending: only the grants are re-applied
    for (const table of ['approval_requests', 'approval_policies']) {
      const privs = await db.admin(`SELECT has_table_privilege($1, $2::regclass, 'DELETE') AS delete, has_any_column_privilege($1, $2::regclass, 'UPDATE') AS update`, [TEST_APP.user, table]);
      expect(privs.rows[0], table).toEqual({ delete: false, update: true });
    }
  });

  it('narrows a table-wide UPDATE on approval_requests (the grant before column grants) to the columns the code writes: the catalog names the others until migrate runs', async () => {
    const db = await freshDatabase();
    await db.admin(`GRANT UPDATE ON approval_requests, approval_policy_changes, partner_offboarding_claims TO ${TEST_APP.user}`);
    const broken = await inspect(db);
    expect(broken.failures.map((f) => `${f.check} ${f.subject}`)).toEqual([`role-privilege role ${TEST_APP.user}`]);
    expect(broken.failures[0]!.reason).toMatch(/approval_requests: UPDATE \([^)]*\brequired_approvals\b/);
    expect(broken.failures[0]!.reason).toMatch(/approval_policy_changes: UPDATE \([^)]*\bpolicy\b/);
    expect(broken.failures[0]!.reason).toMatch(/partner_offboarding_claims: UPDATE \([^)]*\bpartner_reference\b/);

    const config = parseConfig({ JWT_SECRET: TEST_JWT_SECRET, DATABASE_URL: db.appUrl, MIGRATION_DATABASE_URL: db.ownerUrl });
    expect(await migrate(config, entities)).toEqual([]); // nothing pending: only the grants are re-applied
    const repaired = await inspect(db);
    expect(repaired.failures, formatFindings(repaired.failures)).toEqual([]);
    const cols = await db.admin(
      `SELECT column_name FROM information_schema.columns c WHERE table_schema = 'public' AND table_name = 'approval_requests'
          AND has_column_privilege($1, 'approval_requests', column_name, 'UPDATE') ORDER BY 1`,
      [TEST_APP.user],
    );
    expect(cols.rows.map((r) => r.column_name)).toEqual(['decided_at', 'status', 'updated_at']);
  });

  it("names UPDATE of a run's input or a checkpoint's step (held directly or through PUBLIC) and DELETE of runs, which migrate revokes: only the columns the durable runtime writes stay", async () => {
    const db = await freshDatabase();
    await db.admin(`GRANT UPDATE, DELETE ON durable_runs TO ${TEST_APP.user}; GRANT UPDATE ON durable_checkpoints TO ${TEST_APP.user}; GRANT UPDATE (step_name) ON durable_checkpoints TO PUBLIC`);
    const broken = (await inspect(db)).failures.filter((f) => f.subject === `role ${TEST_APP.user}`);
    expect(broken.map((f) => f.check)).toEqual(['role-privilege']);
    for (const [table, column] of [['durable_runs', 'input'], ['durable_runs', 'principal'], ['durable_checkpoints', 'step_name'], ['durable_checkpoints', 'run_id']]) {
      expect(broken[0]!.reason).toMatch(new RegExp(`${table}: UPDATE \\([^)]*\\b${column}\\b`));
    }
    expect(broken[0]!.reason).toMatch(/durable_runs: DELETE;/);

    const config = parseConfig({ JWT_SECRET: TEST_JWT_SECRET, DATABASE_URL: db.appUrl, MIGRATION_DATABASE_URL: db.ownerUrl });
    expect(await migrate(config, entities)).toEqual([]); // nothing pending: only the grants are re-applied
    const repaired = await inspect(db);
    expect(repaired.failures, formatFindings(repaired.failures)).toEqual([]);
    const privs = await db.admin(
      `SELECT has_table_privilege($1, 'durable_runs', 'DELETE') AS delete_runs, has_table_privilege($1, 'durable_checkpoints', 'DELETE') AS delete_checkpoints,
              has_column_privilege($1, 'durable_runs', 'input', 'UPDATE') AS input, has_column_privilege($1, 'durable_checkpoints', 'step_name', 'UPDATE') AS step_name,
              has_column_privilege($1, 'durable_checkpoints', 'output', 'UPDATE') AS output`,
      [TEST_APP.user],
    );
    expect(privs.rows[0]).toEqual({ delete_runs: false, delete_checkpoints: true, input: false, step_name: false, output: true });
  });

  it('names a further UPDATE column the application role reaches by SET ROLE (a NOINHERIT membership), or holds through PUBLIC', async () => {
    const db = await freshDatabase();
    const clone = await cloneAppRole(db);
    const wide = `dealix_wide_${randomBytes(4).toString('hex')}`;
    tempRoles.push(wide);
    await db.admin(`CREATE ROLE ${wide} NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT`);
    await db.admin(`GRANT USAGE ON SCHEMA public TO ${wide}; GRANT UPDATE (required_approvals) ON approval_requests TO ${wide}`);
    await db.admin(`GRANT ${wide} TO ${clone}`);
    // Not the clone's own privilege (NOINHERIT) — but one SET ROLE away, and the tenant's isolation policy is everyone's:
    // a class C request's four-eyes wait lowered to one approval, as the column grants exist to prevent.
    const tenant = randomUUID();
    const request = randomUUID();
    await db.admin(
      `INSERT INTO approval_requests (id, tenant_id, run_id, approval_class, required_approvals, status, submitted_by, reasons, created_at, updated_at)
       VALUES ($1, $2, $3, 'C', 2, 'pending', 'alice', '[]', now(), now())`,
      [request, tenant, randomUUID()],
    );
    const c = new pg.Client({ connectionString: pgUrl({ user: clone, password: clone }, db.name) });
    await c.connect();
    try {
      await c.query('BEGIN');
      await c.query(`SELECT set_config('app.tenant_id', $1, true)`, [tenant]);
      await c.query(`SET LOCAL ROLE ${wide}`);
      expect((await c.query('UPDATE approval_requests SET required_approvals = 1')).rowCount).toBe(1);
      await c.query('ROLLBACK');
    } finally {
      await c.end();
    }
    const viaRole = (await inspect(db, clone)).failures.filter((f) => f.subject === `role ${clone}` && f.check === 'role-privilege');
    expect(viaRole.map((f) => f.reason), formatFindings(viaRole)).toEqual([expect.stringMatching(new RegExp(`^${clone} can SET ROLE ${wide}, which .*approval_requests: UPDATE \\(required_approvals\\)`))]);

    await db.admin(`GRANT UPDATE (reasons) ON approval_requests TO PUBLIC`);
    // PUBLIC's grant is every role's: the system and operator roles are named as well (they may update nothing there).
    const viaPublic = (await inspect(db)).failures.filter((f) => f.subject === `role ${TEST_APP.user}`);
    expect(viaPublic.map((f) => f.check)).toEqual(['role-privilege']);
    expect(viaPublic[0]!.reason).toMatch(/: approval_requests: UPDATE \(reasons\);/);
  });
});

/** The rows of `table` that `role` sees in a session of its own, with no tenant set. */
async function countAs(db: TestDatabase, role: string, table: string): Promise<number> {
  const c = new pg.Client({ connectionString: pgUrl({ user: role, password: role }, db.name) });
  await c.connect();
  try {
    return (await c.query(`SELECT count(*)::int AS n FROM ${table}`)).rows[0].n as number;
  } finally {
    await c.end();
  }
}

/** A login role with exactly the application role's table privileges, for cluster-wide mutations. */
async function cloneAppRole(db: TestDatabase): Promise<string> {
  const name = `dealix_app_clone_${randomBytes(4).toString('hex')}`;
  tempRoles.push(name);
  await db.admin(`CREATE ROLE ${name} LOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT PASSWORD '${name}'`);
  await db.admin(`GRANT CONNECT ON DATABASE ${db.name} TO ${name}; GRANT USAGE ON SCHEMA public TO ${name}`);
  const grants = await db.admin(
    `SELECT table_name, string_agg(privilege_type, ', ') AS privs FROM information_schema.role_table_grants
      WHERE grantee = $1 AND table_schema = 'public' GROUP BY table_name`,
    [TEST_APP.user],
  );
  for (const g of grants.rows) await db.admin(`GRANT ${g.privs} ON ${g.table_name} TO ${name}`);
  // And its column grants (APP_UPDATE_COLUMNS' UPDATE), which role_table_grants does not list.
  const columns = await db.admin(
    `SELECT table_name, privilege_type, string_agg(quote_ident(column_name), ', ') AS cols FROM information_schema.column_privileges p
      WHERE grantee = $1 AND table_schema = 'public'
        AND NOT EXISTS (SELECT 1 FROM information_schema.role_table_grants t
                         WHERE t.grantee = p.grantee AND t.table_schema = p.table_schema AND t.table_name = p.table_name AND t.privilege_type = p.privilege_type)
      GROUP BY table_name, privilege_type`,
    [TEST_APP.user],
  );
  for (const g of columns.rows) await db.admin(`GRANT ${g.privilege_type} (${g.cols}) ON ${g.table_name} TO ${name}`);
  return name;
}
