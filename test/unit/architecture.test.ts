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
    expect(found.map((v) => `${v.file}:${v.line}`)).toEqual([`${held}:2`, `${held}:4`, `${later}:3`, `${later}:4`]);
    expect(found[0]!.detail).toMatch(/^builds an index on durable_runs with a plain CREATE INDEX/);
  });

  it('formats each violation with file, line, rule and the offending import', () => {
    const root = tree({ ...CLEAN, 'src/platform/http/router.ts': "import { routes } from '../../modules/orders/orders.routes.ts';\nexport const router = routes;\n" });
    expect(formatViolations(checkArchitecture(root))).toMatch(/^src\/platform\/http\/router\.ts:1 {2}\[layering\] {2}imports '\.\.\/\.\.\/modules\/orders\/orders\.routes\.ts'/);
  });
});
