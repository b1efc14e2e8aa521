import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { checkArchitecture, CONCURRENT_INDEXES_SINCE, ENTRYPOINT_MAX_LINES, formatViolations } from '../../src/readiness/architecture.check.ts';

/** The architecture check on small fixture trees written to a temporary directory (npm run lint runs it on the repository). */
const roots: string[] = [];
function tree(files: Record<string, string>): string {
  const root = mkdtempSync(join(tmpdir(), 'dealix-arch-'));
  roots.push(root);
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(dirname(join(root, path)), { recursive: true });
    writeFileSync(join(root, path), text);
  }
  return root;
}
afterEach(() => {
  for (const r of roots.splice(0)) rmSync(r, { recursive: true, force: true });
});

const CLEAN = {
  'src/platform/config/config.ts': 'export const loadConfig = () => ({ port: Number(process.env.PORT) });\n',
  'src/platform/http/router.ts': "import { loadConfig } from '../config/config.ts';\nexport const router = () => loadConfig();\n",
  'src/modules/orders/orders.routes.ts': "import { router } from '../../platform/http/router.ts';\nexport const routes = () => router();\n",
  'src/container.ts': "import { routes } from './modules/orders/orders.routes.ts';\nexport const createContainer = () => ({ routes });\n",
  'src/server.ts': "import { createContainer } from './container.ts';\ncreateContainer();\n",
  'workers/orders.worker.ts': "import { createContainer } from '../src/container.ts';\ncreateContainer();\n",
  'test/unit/env.test.ts': "const url = process.env.DATABASE_URL;\nexport { url };\n",
};

describe('architecture check', () => {
  it('passes a tree that keeps every rule', () => {
    const result = checkArchitecture(tree(CLEAN));
    expect(result.violations).toEqual([]);
    expect(result.files).toBe(Object.keys(CLEAN).length);
  });

  it('fails when platform imports a module, naming the file, line and import', () => {
    const root = tree({ ...CLEAN, 'src/platform/http/router.ts': "import { loadConfig } from '../config/config.ts';\nimport { routes } from '../../modules/orders/orders.routes.ts';\nexport const router = () => [loadConfig, routes];\n" });
    const { violations } = checkArchitecture(root);
    expect(violations).toContainEqual({
      rule: 'layering',
      file: 'src/platform/http/router.ts',
      line: 2,
      detail: "imports '../../modules/orders/orders.routes.ts' (src/modules/orders/orders.routes.ts): src/platform must not import src/modules",
    });
  });

  it('counts a type-only import from platform into modules as a layering violation too', () => {
    const root = tree({ ...CLEAN, 'src/platform/http/types.ts': "import type { routes } from '../../modules/orders/orders.routes.ts';\nexport type R = typeof routes;\n" });
    expect(checkArchitecture(root).violations.map((v) => v.rule)).toEqual(['layering']);
  });

  it('fails an import cycle, printing the cycle', () => {
    const root = tree({
      ...CLEAN,
      'src/platform/a.ts': "import { b } from './b.ts';\nexport const a = () => b;\n",
      'src/platform/b.ts': "import { c } from './c.ts';\nexport const b = () => c;\n",
      'src/platform/c.ts': "\nimport { a } from './a.ts';\nexport const c = () => a;\n",
    });
    const cycles = checkArchitecture(root).violations.filter((v) => v.rule === 'cycle');
    expect(cycles).toHaveLength(1);
    expect(cycles[0]!.detail).toBe('import cycle: src/platform/a.ts:1 → src/platform/b.ts:1 → src/platform/c.ts:2 → src/platform/a.ts');
  });

  it('ignores cycles through type-only imports, which are erased at compile time', () => {
    const root = tree({
      ...CLEAN,
      'src/platform/a.ts': "import type { B } from './b.ts';\nexport interface A { b?: B }\n",
      'src/platform/b.ts': "import { type A } from './a.ts';\nexport interface B { a?: A }\n",
    });
    expect(checkArchitecture(root).violations).toEqual([]);
  });

  it('fails process.env outside the config module in every form it can be read', () => {
    const root = tree({
      ...CLEAN,
      'src/platform/http/port.ts': 'export const port = process.env.PORT;\n',
      'src/modules/orders/flag.ts': "export const flag = process['env'].FLAG;\n",
      'src/modules/orders/destructure.ts': 'const { env } = process;\nexport const x = env.X;\n',
      'src/platform/queue/imported.ts': "import { env } from 'node:process';\nexport const y = env.Y;\n",
    });
    const env = checkArchitecture(root).violations.filter((v) => v.rule === 'process-env');
    expect(env.map((v) => `${v.file}:${v.line}`).sort()).toEqual([
      'src/modules/orders/destructure.ts:1',
      'src/modules/orders/flag.ts:1',
      'src/platform/http/port.ts:1',
      'src/platform/queue/imported.ts:1',
    ]);
  });

  it('fails an entrypoint longer than the limit, but does not count comments and blank lines', () => {
    const body = Array.from({ length: ENTRYPOINT_MAX_LINES }, (_, i) => `createContainer(${i});`).join('\n');
    const padded = `// a comment\n\n/** doc\n * block\n */\n${"import { createContainer } from './container.ts';"}\n${body.split('\n').slice(1).join('\n\n')}\n`;
    expect(checkArchitecture(tree({ ...CLEAN, 'src/server.ts': padded })).violations).toEqual([]);
    const long = `import { createContainer } from './container.ts';\n${body}\n`;
    const { violations } = checkArchitecture(tree({ ...CLEAN, 'src/cli/report.ts': long.replace('./container.ts', '../container.ts') }));
    expect(violations).toEqual([expect.objectContaining({ rule: 'thin-entrypoint', file: 'src/cli/report.ts', detail: expect.stringMatching(/^61 lines of code, more than 60/) })]);
  });

  it('fails an entrypoint that imports business code or declares a class', () => {
    const root = tree({
      ...CLEAN,
      'workers/orders.worker.ts': "import { routes } from '../src/modules/orders/orders.routes.ts';\nclass Runner { run() { return routes(); } }\nnew Runner().run();\n",
    });
    const details = checkArchitecture(root).violations.map((v) => `${v.rule} ${v.file}${v.line ? `:${v.line}` : ''}`);
    expect(details.sort()).toEqual(['thin-entrypoint workers/orders.worker.ts', 'thin-entrypoint workers/orders.worker.ts:1']);
  });

  it('fails a migration from CONCURRENT_INDEXES_SINCE on that builds an index on a large table with a plain CREATE INDEX, naming the line', () => {
    // The first held migration's statements as they were first written, in the migrations' transaction.
    const plain = [
      "import { Migration } from '@mikro-orm/migrations';",
      'this.addSql(`create index if not exists "durable_runs_tenant_workflow_status_created_index" on "durable_runs" ("tenant_id", "workflow", "status", "created_at", "id");`);',
      'this.addSql(`drop index if exists "durable_runs_tenant_created_index";`);',
      'this.addSql(`CREATE INDEX durable_runs_tenant_created_index\n  ON durable_runs (tenant_id, created_at, id);`);',
    ].join('\n');
    const held = `migrations/${CONCURRENT_INDEXES_SINCE}_run_list_workflow_status_index.ts`;
    const later = 'migrations/Migration20270101000000_later.ts';
    const root = tree({
      ...CLEAN,
      [held]: plain,
      // Concurrently, a new table's index, and an earlier migration: all allowed. Without a name (PostgreSQL names it) too.
      [later]: 'this.addSql(`create index concurrently if not exists "a" on "durable_runs" ("id");`);\nthis.addSql(`create index "b" on "new_things" ("id");`);\nthis.addSql(`create unique index "c" on public.webhook_deliveries (id);`);\nthis.addSql(`create index on durable_checkpoints (run_id);`);\n',
      'migrations/Migration20261202062557_approvals_newest_first_index.ts': 'this.addSql(`create index "approval_requests_tenant_created_index" on "approval_requests" ("tenant_id", "created_at");`);\n',
    });
    const found = checkArchitecture(root).violations.filter((v) => v.rule === 'index-migration');
    // Line 3 drops a runs index with a plain DROP INDEX (the next test).
    expect(found.map((v) => `${v.file}:${v.line}`)).toEqual([`${held}:2`, `${held}:3`, `${held}:4`, `${later}:3`, `${later}:4`]);
    expect(found[0]!.detail).toMatch(/^builds an index on durable_runs with a plain CREATE INDEX/);
  });

  it("fails a held migration that drops a large table's index with a plain DROP INDEX, telling the table by the migrations that built the index or else by its name", () => {
    const held = `migrations/${CONCURRENT_INDEXES_SINCE}_run_list_workflow_status_index.ts`;
    const later = 'migrations/Migration20270101000000_later.ts';
    const root = tree({
      ...CLEAN,
      // As MikroORM generates it, and the other forms PostgreSQL reads.
      [held]: [
        "import { Migration } from '@mikro-orm/migrations';",
        'this.addSql(\'drop index "durable_runs_tenant_created_index";\');',
        'this.addSql(`DROP INDEX IF EXISTS public.approval_requests_tenant_status_index, "webhook_endpoints_tenant_created_index";`);',
        'this.addSql(`drop index "runs_by_tenant";`);',
      ].join('\n'),
      // Concurrently, a small table's index, one of a small table whose name starts with a large one's, a name the rule cannot place.
      [later]: [
        'this.addSql(`drop index concurrently if exists "durable_runs_tenant_created_index";`);',
        'this.addSql(`drop index "webhook_endpoints_tenant_created_index";`);',
        'this.addSql(`drop index "durable_runs_archive_created_index";`);',
        'this.addSql(`drop index "idx_something";`);',
      ].join('\n'),
      // Earlier migrations are not held, but tell which table an index belongs to.
      'migrations/Migration20261124000457_initial.ts': [
        'this.addSql(`create index "runs_by_tenant" on "durable_runs" ("tenant_id");`);',
        'this.addSql(`create table "durable_runs_archive" ("id" uuid not null, "created_at" timestamptz not null, constraint "durable_runs_archive_pkey" primary key ("id"));`);',
        'this.addSql(`drop index "durable_checkpoints_tenant_id_index";`);',
      ].join('\n'),
    });
    const found = checkArchitecture(root).violations.filter((v) => v.rule === 'index-migration');
    expect(found.map((v) => `${v.file}:${v.line}`)).toEqual([`${held}:2`, `${held}:3`, `${held}:4`]);
    expect(found[0]!.detail).toMatch(/^drops durable_runs_tenant_created_index, an index of durable_runs \(by its name\), with a plain DROP INDEX/);
    expect(found[1]!.detail).toMatch(/^drops approval_requests_tenant_status_index, an index of approval_requests/);
    expect(found[2]!.detail).toMatch(/^drops runs_by_tenant, an index of durable_runs \(Migration20261124000457_initial\.ts\), with a plain DROP INDEX/);
  });

  it('fails a held migration that builds a unique index or primary key on a large table with ALTER TABLE … ADD, but not one that adopts an index built concurrently, nor a new table', () => {
    const held = `migrations/${CONCURRENT_INDEXES_SINCE}_natural_keys.ts`;
    const created = 'migrations/Migration20270101000000_webhook_deliveries.ts';
    const root = tree({
      ...CLEAN,
      [held]: [
        'this.addSql(`alter table "durable_runs" add constraint "durable_runs_tenant_key_unique" unique ("tenant_id", "key");`);',
        'this.addSql(`alter table only public.durable_checkpoints add primary key ("tenant_id", "run_id", "sequence_num");`);',
        'this.addSql(`alter table "durable_runs" add constraint "durable_runs_natural_pkey" primary key using index "durable_runs_natural_key";`);',
        'this.addSql(`alter table "durable_runs" drop constraint "durable_runs_tenant_id_id_unique";`);',
        'this.addSql(`alter table "webhook_endpoints" add constraint "webhook_endpoints_url_unique" unique ("url");`);',
        'this.addSql(`alter table "durable_runs" add "crash_seq" int null;`);',
      ].join('\n'),
      // A table created in the same migration is empty: its indexes and keys go with it, as generated.
      [created]: [
        'this.addSql(`create table "webhook_deliveries" ("id" uuid not null, "tenant_id" uuid not null, constraint "webhook_deliveries_pkey" primary key ("id"));`);',
        'this.addSql(`create index "webhook_deliveries_tenant_id_index" on "webhook_deliveries" ("tenant_id");`);',
        'this.addSql(`alter table "webhook_deliveries" add constraint "webhook_deliveries_tenant_id_id_unique" unique ("tenant_id", "id");`);',
        'this.addSql(`drop index "webhook_deliveries_tenant_id_index";`);',
      ].join('\n'),
    });
    const found = checkArchitecture(root).violations.filter((v) => v.rule === 'index-migration');
    expect(found.map((v) => `${v.file}:${v.line}`)).toEqual([`${held}:1`, `${held}:2`]);
    expect(found[0]!.detail).toMatch(/^builds a unique index on durable_runs with ALTER TABLE … ADD, locking out/);
  });

  it('formats each violation with file, line, rule and the offending import', () => {
    const root = tree({ ...CLEAN, 'src/platform/http/router.ts': "import { routes } from '../../modules/orders/orders.routes.ts';\nexport const router = routes;\n" });
    expect(formatViolations(checkArchitecture(root))).toMatch(/^src\/platform\/http\/router\.ts:1 {2}\[layering\] {2}imports '\.\.\/\.\.\/modules\/orders\/orders\.routes\.ts'/);
  });
});
