import { describe, expect, it } from 'vitest';
import { randomBytes, randomUUID } from 'node:crypto';
import pg from 'pg';
import { createTestDatabase, seedRun, type TestDatabase } from '../helpers/db.ts';
import { TEST_ADMIN_URL, TEST_APP, TEST_OWNER, pgUrl } from '../helpers/env.ts';
import { envFor, matrixFor } from './readiness.fixtures.ts';
import { migrate } from '../../src/platform/db/migrate.ts';
import { parseConfig } from '../../src/platform/config/config.ts';
import { entities } from '../../src/entities.ts';
import { autovacuumRow } from '../../src/readiness/database.checks.ts';
import { CURRENT_TENANT_SQL } from '../../src/platform/db/tenant-owned.ts';

/**
 * Database rows of the readiness matrix, each broken in a throwaway database (a clone of the migrated
 * template, or an empty one) and, for the role rows, through a temporary role created for the test:
 * dealix_app itself is never altered, other test files use it.
 */
async function admin(sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: TEST_ADMIN_URL });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

/** A login role of its own for one test, granted just enough to connect; dropped with its database. */
async function withTempRole(attrs: string, fn: (role: { user: string; password: string }, db: TestDatabase) => Promise<void>): Promise<void> {
  const role = { user: `dealix_rdy_${randomBytes(4).toString('hex')}`, password: 'readiness-temp-role' };
  const db = await createTestDatabase();
  await admin(`CREATE ROLE ${role.user} LOGIN PASSWORD '${role.password}' NOSUPERUSER ${attrs}`);
  try {
    await admin(`GRANT CONNECT ON DATABASE ${db.name} TO ${role.user}`);
    await db.admin(`GRANT USAGE ON SCHEMA public TO ${role.user}`);
    await fn(role, db);
  } finally {
    await db.drop();
    await admin(`DROP ROLE IF EXISTS ${role.user}`);
  }
}

describe('row-level security rows', () => {
  it('dropping the isolation policy of a table fails that table and no other', async () => {
    const m = await matrixFor({ tamper: (db) => db.admin('DROP POLICY durable_runs_tenant_isolation ON durable_runs').then(() => {}) });
    expect(m.row('rls durable_runs').status).toBe('FAIL');
    expect(m.row('rls durable_runs').reason).toMatch(/no permissive policy for ALL commands/);
    expect(m.row('rls durable_checkpoints').status).toBe('PASS');
    expect(m.row('app-role').status).toBe('PASS');
  });

  it('removing FORCE fails the table: its owner would bypass the policies', async () => {
    const m = await matrixFor({ tamper: (db) => db.admin('ALTER TABLE evidence_packs NO FORCE ROW LEVEL SECURITY').then(() => {}) });
    expect(m.row('rls evidence_packs')).toMatchObject({ status: 'FAIL' });
    expect(m.row('rls evidence_packs').reason).toMatch(/not forced/);
    expect(m.row('rls partner_dossiers').status).toBe('PASS');
  });

  it('disabling row-level security fails the table', async () => {
    const m = await matrixFor({ tamper: (db) => db.admin('ALTER TABLE partner_dossiers DISABLE ROW LEVEL SECURITY').then(() => {}) });
    expect(m.row('rls partner_dossiers').reason).toMatch(/not enabled/);
  });

  it('a policy without WITH CHECK is not an isolation policy', async () => {
    const m = await matrixFor({
      tamper: async (db) => {
        await db.admin('DROP POLICY idempotency_keys_tenant_isolation ON idempotency_keys');
        await db.admin(`CREATE POLICY idempotency_keys_read ON idempotency_keys FOR ALL USING (tenant_id = (NULLIF(current_setting('app.tenant_id', true), ''))::uuid)`);
      },
    });
    expect(m.row('rls idempotency_keys').status).toBe('FAIL');
  });

  it('an isolation policy that names tenant_id and app.tenant_id but admits other tenants fails its table', async () => {
    const tenant = (id: string) => `(tenant_id = ${CURRENT_TENANT_SQL} OR tenant_id <> '${id}')`;
    const [mine, theirs] = [randomUUID(), randomUUID()];
    const m = await matrixFor({
      tamper: async (db) => {
        await db.admin(`ALTER POLICY evidence_packs_tenant_isolation ON evidence_packs USING ${tenant(mine)} WITH CHECK ${tenant(mine)}`);
        await db.admin(`INSERT INTO evidence_packs (id, tenant_id, run_id, content, sha256, created_at) VALUES ($1, $2, $3, '{}', 'x', now())`, [randomUUID(), theirs, await seedRun(db, theirs)]);
        // The bad state is real: the application role, in a transaction of tenant `mine`, reads `theirs`'s pack.
        const app = new pg.Client({ connectionString: db.appUrl });
        await app.connect();
        try {
          await app.query('BEGIN');
          await app.query(`SELECT set_config('app.tenant_id', $1, true)`, [mine]);
          expect((await app.query('SELECT tenant_id FROM evidence_packs')).rows).toEqual([{ tenant_id: theirs }]);
          await app.query('ROLLBACK');
        } finally {
          await app.end();
        }
      },
    });
    expect(m.row('rls evidence_packs').status).toBe('FAIL');
    expect(m.row('rls evidence_packs').reason).toMatch(/evidence_packs_tenant_isolation/);
    expect(m.row('rls partner_dossiers').status).toBe('PASS');
  });

  it('a permissive policy that ignores the tenant fails the table it widens', async () => {
    const m = await matrixFor({ tamper: (db) => db.admin('CREATE POLICY leak ON approval_requests FOR SELECT USING (true)').then(() => {}) });
    expect(m.row('rls approval_requests').status).toBe('FAIL');
    expect(m.row('rls approval_requests').reason).toMatch(/policy leak/);
  });
});

describe('unique keys', () => {
  it('a unique constraint without tenant_id fails its table', async () => {
    const m = await matrixFor({ tamper: (db) => db.owner('ALTER TABLE economics_models ADD CONSTRAINT economics_models_run_only_unique UNIQUE (run_id)').then(() => {}) });
    expect(m.row('tenant-unique economics_models').status).toBe('FAIL');
    expect(m.row('tenant-unique economics_models').reason).toMatch(/economics_models_run_only_unique.*\(run_id\)/);
    expect(m.row('tenant-unique durable_runs').status).toBe('PASS');
    // A natural primary key is counted and checked as a unique key; only the surrogate `id` is not.
    expect(m.row('tenant-unique durable_checkpoints')).toMatchObject({ status: 'PASS', reason: '1 unique key(s), all include tenant_id' });
    expect(m.row('tenant-unique approval_policy_changes')).toMatchObject({ status: 'PASS', reason: 'no unique keys besides the surrogate primary key (id)' });
  });

  it('a unique index without tenant_id fails too', async () => {
    const m = await matrixFor({ tamper: (db) => db.owner('CREATE UNIQUE INDEX approval_requests_run_idx ON approval_requests (run_id)').then(() => {}) });
    expect(m.row('tenant-unique approval_requests').status).toBe('FAIL');
  });
});

describe('the application role, read from the live connection', () => {
  it('a role with BYPASSRLS fails the app-role row', async () => {
    await withTempRole('BYPASSRLS', async (role, db) => {
      const m = await matrixFor({ db, env: { DATABASE_URL: pgUrl(role, db.name) } });
      expect(m.row('app-role').status).toBe('FAIL');
      expect(m.row('app-role').reason).toMatch(new RegExp(`${role.user} is BYPASSRLS`));
    });
  });

  it('a role that owns a table fails the app-role row', async () => {
    await withTempRole('NOBYPASSRLS', async (role, db) => {
      await db.admin(`ALTER TABLE approval_policies OWNER TO ${role.user}`);
      const m = await matrixFor({ db, env: { DATABASE_URL: pgUrl(role, db.name) } });
      expect(m.row('app-role').status).toBe('FAIL');
      expect(m.row('app-role').reason).toMatch(/owns .*approval_policies/);
    });
  });

  it('a table-wide UPDATE on approval_requests fails the app-role row, naming the columns the code never writes', async () => {
    // As before the column grants: one approver could lower a class C request's required approvals, then decide it alone.
    const m = await matrixFor({ tamper: (db) => db.admin(`GRANT UPDATE ON approval_requests TO ${TEST_APP.user}`).then(() => {}) });
    expect(m.row('app-role').status).toBe('FAIL');
    expect(m.row('app-role').reason).toMatch(/approval_requests: UPDATE \([^)]*\bapproval_class\b/);
    expect(m.row('app-role').reason).toMatch(/approval_requests: UPDATE \([^)]*\brequired_approvals\b/);
    expect(m.row('app-role').reason).not.toMatch(/approval_requests: UPDATE \([^)]*\bstatus\b/);
  });

  it("a database whose PUBLIC keeps TEMP (CREATE DATABASE's default, a provider's console) fails the app-role row", async () => {
    const m = await matrixFor({ tamper: (db) => db.owner(`GRANT TEMP ON DATABASE ${db.name} TO PUBLIC`).then(() => {}) });
    expect(m.row('app-role').status).toBe('FAIL');
    expect(m.row('app-role').reason).toMatch(new RegExp(`^${TEST_APP.user} may create temporary tables in database dealix_t_\\w+ .*REVOKE TEMP ON DATABASE`));
    expect(m.row('role dealix_system').reason).toMatch(/may create temporary tables/);
  });

  it('an application role without the grants db:migrate gives it fails, naming what it lacks; once db:migrate ran for it, it passes', async () => {
    await withTempRole('NOBYPASSRLS', async (role, db) => {
      const env = { DATABASE_URL: pgUrl(role, db.name) };
      const bare = await matrixFor({ db, env });
      expect(bare.row('app-role').status).toBe('FAIL');
      expect(bare.row('app-role').reason).toMatch(new RegExp(`^${role.user} lacks privileges its code uses \\(roles\\.ts\\): .*durable_runs: SELECT; .*npm run db:migrate`));
      // As a deploy with its own role name does it: db:migrate grants the role DATABASE_URL names.
      expect(await migrate(parseConfig(envFor(db, env)), entities)).toEqual([]);
      const m = await matrixFor({ db, env });
      expect(m.row('app-role')).toMatchObject({ status: 'PASS' });
      expect(m.row('app-role').reason).toContain(role.user);
    });
  });
});

describe('the system role and views', () => {
  it('a maintenance role that can log in fails its row', async () => {
    await withTempRole('NOBYPASSRLS', async (role) => {
      const m = await matrixFor({ adjust: () => ({ systemRole: role.user }) });
      expect(m.row(`role ${role.user}`).status).toBe('FAIL');
      expect(m.row(`role ${role.user}`).reason).toMatch(/can log in/);
    });
  });

  it('a system role that cannot read a column the sweeper reads fails its row, naming the column and db:migrate', async () => {
    // As after a deploy that skipped `db:migrate` where the release needs a wider grant (ADR 0008's workflow_version).
    const m = await matrixFor({ tamper: (db) => db.admin('REVOKE SELECT (workflow_version) ON durable_runs FROM dealix_system').then(() => {}) });
    expect(m.row('role dealix_system').status).toBe('FAIL');
    expect(m.row('role dealix_system').reason).toMatch(/lacks durable_runs: SELECT \(workflow_version\), .*npm run db:migrate/);
    expect(m.row('app-role').status).toBe('PASS');
    // The migrated database grants every column: the row passes.
    expect((await matrixFor()).row('role dealix_system').status).toBe('PASS');
  });

  it('a view readable by the app role without security_invoker fails views-functions', async () => {
    const m = await matrixFor({
      tamper: async (db) => {
        await db.owner('CREATE VIEW all_runs AS SELECT id, tenant_id, status FROM durable_runs');
        await db.owner(`GRANT SELECT ON all_runs TO ${TEST_APP.user}`);
      },
    });
    expect(m.row('views-functions').status).toBe('FAIL');
    expect(m.row('views-functions').reason).toMatch(/all_runs/);
    expect(m.row('rls durable_runs').status).toBe('PASS');
  });
});

describe('function-search-path', () => {
  // A function body resolves the names it reads through the search path it runs with; without one of
  // its own, the caller's, whose temporary schema comes first (ADR 0001, "Trigger functions name what they read").
  it('the migrated schema passes: every function, the trigger functions and durable_expect alike, runs with a fixed search path', async () => {
    const m = await matrixFor();
    expect(m.row('function-search-path')).toMatchObject({ status: 'PASS' });
    expect(m.row('function-search-path').reason).toMatch(/pg_catalog, public, pg_temp/);
  });

  it('a trigger function whose search path was reset fails the row, naming it; the other rows pass', async () => {
    const m = await matrixFor({ tamper: (db) => db.owner('ALTER FUNCTION evidence_packs_seal_fn() RESET search_path').then(() => {}) });
    expect(m.row('function-search-path').status).toBe('FAIL');
    expect(m.row('function-search-path').reason).toMatch(/evidence_packs_seal_fn\(\) \(a trigger function\) has no search_path of its own/);
    expect(m.row('function-search-path').reason).not.toMatch(/durable_runs_ended_is_history_fn|durable_expect/);
    expect(m.row('rls evidence_packs').status).toBe('PASS');
    expect(m.row('views-functions').status).toBe('PASS');
  });

  it('a SECURITY DEFINER function with a search path that does not list pg_temp last fails the row: PostgreSQL then searches pg_temp first', async () => {
    const m = await matrixFor({
      tamper: (db) => db.owner(`CREATE FUNCTION run_count() RETURNS bigint SECURITY DEFINER LANGUAGE sql SET search_path = public AS 'SELECT count(*) FROM durable_runs'`).then(() => {}),
    });
    expect(m.row('function-search-path').status).toBe('FAIL');
    expect(m.row('function-search-path').reason).toMatch(/run_count\(\) \(SECURITY DEFINER\) runs with search_path public, which does not list pg_temp last/);
  });

  it('durable_expect with its search path reset fails the row', async () => {
    const m = await matrixFor({ tamper: (db) => db.owner('ALTER FUNCTION durable_expect(boolean, text) RESET search_path').then(() => {}) });
    expect(m.row('function-search-path').status).toBe('FAIL');
    expect(m.row('function-search-path').reason).toMatch(/durable_expect\(boolean,text\) has no search_path of its own/);
  });
});

describe('migrations', () => {
  it('a fresh database without migrations has the initial migration pending', async () => {
    const name = `dealix_t_${randomBytes(6).toString('hex')}`;
    await admin(`CREATE DATABASE ${name} OWNER ${TEST_OWNER.user}`);
    await admin(`GRANT CONNECT ON DATABASE ${name} TO ${TEST_APP.user}`);
    const db = { name, appUrl: pgUrl(TEST_APP, name), ownerUrl: pgUrl(TEST_OWNER, name) } as TestDatabase;
    try {
      const m = await matrixFor({ db });
      expect(m.row('migrations').status).toBe('FAIL');
      expect(m.row('migrations').reason).toMatch(/pending: Migration\d+_initial/);
      expect(m.row('rls durable_runs').status).toBe('FAIL');
    } finally {
      await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    }
  });

  it('a trigger disabled outside the migrations is drift: evidence packs would be written without their seal', async () => {
    const m = await matrixFor({ tamper: (db) => db.owner('ALTER TABLE evidence_packs DISABLE TRIGGER seal').then(() => {}) });
    expect(m.row('schema-drift').status).toBe('FAIL');
    expect(m.row('schema-drift').reason).toMatch(/enable trigger "seal"/);
    expect(m.row('migrations').status).toBe('PASS');
  });

  it('an index left INVALID (a concurrent build that failed, recorded or by hand) is drift: the planner never uses it, and the schema diff sees only its definition', async () => {
    const invalid = (db: TestDatabase) => db.admin(`update pg_index set indisvalid = false where indexrelid = 'durable_runs_status_updated_id_index'::regclass`).then(() => {});
    const m = await matrixFor({ tamper: invalid });
    expect(m.row('schema-drift').status).toBe('FAIL');
    expect(m.row('schema-drift').reason).toMatch(/reindex index concurrently "durable_runs_status_updated_id_index"/);
    expect(m.row('migrations').status).toBe('PASS');
  });

  it('a schema changed outside the migrations is drift', async () => {
    const m = await matrixFor({ tamper: (db) => db.owner('ALTER TABLE durable_runs ADD COLUMN hand_made integer').then(() => {}) });
    expect(m.row('schema-drift').status).toBe('FAIL');
    expect(m.row('schema-drift').reason).toMatch(/hand_made/);
    expect(m.row('migrations').status).toBe('PASS');
  });
});

describe('autovacuum', () => {
  it('the row reports the server\'s real setting: off fails in production and is N/A elsewhere with the reason; on passes', async () => {
    const c = new pg.Client({ connectionString: TEST_ADMIN_URL });
    await c.connect();
    const setting = (await c.query<{ autovacuum: string }>('show autovacuum').finally(() => c.end())).rows[0]!.autovacuum;
    const production = (d: { config: object }) => ({ config: { ...d.config, NODE_ENV: 'production' } as never });
    const [dev, prod] = [await matrixFor(), await matrixFor({ adjust: production })];
    if (setting === 'on') {
      expect(dev.row('postgres-autovacuum')).toEqual({ component: 'postgres-autovacuum', status: 'PASS', reason: 'autovacuum on' });
      expect(prod.row('postgres-autovacuum').status).toBe('PASS');
    } else {
      expect(dev.row('postgres-autovacuum')).toMatchObject({ status: 'N/A', reason: expect.stringMatching(/^not required outside production \(autovacuum off: tables get no statistics/) });
      expect(prod.row('postgres-autovacuum')).toMatchObject({ status: 'FAIL', reason: expect.stringMatching(/^autovacuum off: .*turn it on/) });
    }
  });

  it('maps each setting to its verdict', () => {
    expect(autovacuumRow('on', { production: true })).toEqual({ component: 'postgres-autovacuum', status: 'PASS', reason: 'autovacuum on' });
    expect(autovacuumRow('off', { production: true }).status).toBe('FAIL');
    expect(autovacuumRow('off', { production: false }).status).toBe('N/A');
    expect(autovacuumRow(undefined, { production: true }).reason).toMatch(/^autovacuum unknown/);
  });
});
