import { randomBytes, randomUUID } from 'node:crypto';
import pg from 'pg';
import { TEST_ADMIN_URL, TEST_APP, TEST_OWNER, TEST_TEMPLATE_DB, pgUrl } from './env.ts';

export interface TestDatabase {
  name: string;
  appUrl: string;
  ownerUrl: string;
  adminUrl: string;
  /** Runs SQL as the superuser in this database (setup and tampering only; never to assert isolation). */
  admin(sql: string, params?: unknown[]): Promise<pg.QueryResult>;
  /** Runs SQL as the table owner (e.g. tampering with a stored row). */
  owner(sql: string, params?: unknown[]): Promise<pg.QueryResult>;
  drop(): Promise<void>;
}

/**
 * At most this many of a test process's one-off connections (admin(), owner(), database setup) are
 * open at once; the rest wait their turn. Each opens its own connection, so a test that mapped 120
 * ids to admin() reads opened 120 at once — with the other test file running beside it, past the
 * server's max_connections (100): "sorry, too many clients already" failed a CI run.
 */
const ONE_OFF_CONNECTIONS = 8;
let openOneOffs = 0;
const waitingOneOffs: Array<() => void> = [];

async function once(url: string, sql: string, params?: unknown[]) {
  if (openOneOffs >= ONE_OFF_CONNECTIONS) await new Promise<void>((r) => waitingOneOffs.push(r));
  else openOneOffs++;
  try {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try {
      return await c.query(sql, params as any[]);
    } finally {
      await c.end();
    }
  } finally {
    // The slot passes straight to the next waiter, if any (the count stays), else it is freed.
    const next = waitingOneOffs.shift();
    if (next) next();
    else openOneOffs--;
  }
}

/**
 * A fresh database cloned from the migrated template, owned by the owner role; with `empty`, one
 * without any migration applied (for tests of migrations).
 */
export async function createTestDatabase(opts: { empty?: boolean } = {}): Promise<TestDatabase> {
  const name = `dealix_t_${randomBytes(6).toString('hex')}`;
  await once(TEST_ADMIN_URL, `CREATE DATABASE ${name}${opts.empty ? '' : ` TEMPLATE ${TEST_TEMPLATE_DB}`} OWNER ${TEST_OWNER.user}`);
  await once(TEST_ADMIN_URL, `REVOKE ALL ON DATABASE ${name} FROM PUBLIC`);
  await once(TEST_ADMIN_URL, `GRANT CONNECT ON DATABASE ${name} TO ${TEST_APP.user}`);
  const adminUrl = (() => {
    const u = new URL(TEST_ADMIN_URL);
    u.pathname = `/${name}`;
    return u.toString();
  })();
  const ownerUrl = pgUrl(TEST_OWNER, name);
  return {
    name,
    appUrl: pgUrl(TEST_APP, name),
    ownerUrl,
    adminUrl,
    admin: (sql, params) => once(adminUrl, sql, params),
    owner: (sql, params) => once(ownerUrl, sql, params),
    drop: async () => {
      await once(TEST_ADMIN_URL, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => {});
    },
  };
}

/**
 * A running golden-path run of `tenant`, written by the superuser (setup only), for a test's evidence pack
 * to name: the pack insert's trigger refuses a pack of no run of its tenant (evidence-pack.entity.ts).
 */
export async function seedRun(db: Pick<TestDatabase, 'admin'>, tenant: string, runId: string = randomUUID()): Promise<string> {
  await db.admin(
    `insert into durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, correlation_id, step_count, created_at, updated_at)
     values ($1, $2, 'golden-path', 1, $3, 'running', 'submitter-1', '{}', 'c', 4, now(), now())`,
    [runId, tenant, randomUUID().replaceAll('-', '')],
  );
  return runId;
}
