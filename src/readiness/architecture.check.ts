import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { scanSource, type ScannedFile } from './import-scan.ts';

/**
 * Architecture conformance (npm run architecture, part of npm run lint). Rules, each with the reason:
 * - layering: src/platform imports only src/platform (and packages). It never imports src/modules, nor
 *   the composition files (container, app, entities) that import the modules.
 * - no import cycles among project files. Type-only imports are erased at compile time and do not count.
 * - process.env is read only in src/platform/config/config.ts (plus test/ and vitest.config.ts).
 * - entrypoints (src/server.ts, workers/*.ts, src/cli/*.ts) stay thin: at most ENTRYPOINT_MAX_LINES lines of
 *   code (comments and blank lines do not count), no class, and no import of src/modules: business logic
 *   lives in modules and reaches an entrypoint only through the composition root (src/container.ts).
 * - index-migration: a migration from CONCURRENT_INDEXES_SINCE on builds no index on a table of
 *   LARGE_TABLES with a plain CREATE INDEX, which holds off every write of the table while it reads it,
 *   inside the migrations' transaction; nor with ALTER TABLE … ADD UNIQUE / PRIMARY KEY / EXCLUDE (an
 *   ACCESS EXCLUSIVE lock, reads too, for the whole build; `… USING INDEX` of an index built
 *   concurrently is allowed); and drops none of their indexes with a plain DROP INDEX, whose ACCESS
 *   EXCLUSIVE lock holds off every read and write of the table until the migrations commit. It builds
 *   and drops them concurrently (src/platform/db/concurrent-index.ts; docs/runbook.md, *Migrate
 *   (outside a deploy)*). The earlier migrations have run as they are; a table created in the same
 *   migration is empty, and its indexes are built (and dropped) with it.
 *   A DROP INDEX names only the index: its table is the one the migrations (any of them, `up` or
 *   `down`) last built an index of that name on (CREATE INDEX, a named UNIQUE / PRIMARY KEY / EXCLUDE
 *   constraint, an IndexSpec `{ name, table }`), else the longest known table (LARGE_TABLES and the
 *   migrations' CREATE TABLEs) its name starts with followed by `_` — the `<table>_…` names of the
 *   entities, of MikroORM's generated ones and of PostgreSQL's own (`<table>_<column>_idx`). Not seen:
 *   an index built outside the migrations under another name, one renamed (ALTER INDEX … RENAME), a name
 *   only known at run time (`drop index "${name}"`). The snapshot is not read: it holds the schema
 *   after the newest migration, without the very index that migration drops.
 *   ALTER TABLE … DROP CONSTRAINT (a unique constraint's index with it) is not reported: it has no
 *   concurrent form, and its lock is that of every other ALTER TABLE (ADD COLUMN) of a migration.
 *   A text check, as the others: it reads comments as statements.
 */
export const ENTRYPOINT_MAX_LINES = 60;
export const ENV_ALLOWED = ['src/platform/config/config.ts', 'vitest.config.ts'];
const SCANNED_DIRS = ['src', 'workers', 'migrations', 'test'];
/** The tables that grow with runs and submissions. */
export const LARGE_TABLES = ['approval_decisions', 'approval_requests', 'durable_checkpoints', 'durable_runs', 'economics_models', 'evidence_packs', 'evidence_seals', 'idempotency_keys', 'partner_dossiers', 'webhook_deliveries'];
/** The first migration held to the index-migration rule (file names sort by their timestamp). */
export const CONCURRENT_INDEXES_SINCE = 'Migration20261205032101';
/** `create [unique] index [[if not exists] <name>] on [only] <table>`, not concurrently; group 1 the table. The name is optional in PostgreSQL. */
const PLAIN_CREATE_INDEX = /\bcreate\s+(?:unique\s+)?index\s+(?!concurrently\b)(?:(?:if\s+not\s+exists\s+)?"?\w+"?\s+)?on\s+(?:only\s+)?"?(?:public"?\."?)?(\w+)"?/gi;
/** `drop index [if exists] <name>[, <name>…]`, not concurrently; group 1 the (possibly schema-qualified, quoted) names. */
const PLAIN_DROP_INDEX = /\bdrop\s+index\s+(?!concurrently\b)(?:if\s+exists\s+)?((?:"?\w+"?\.)?"?\w+"?(?:\s*,\s*(?:"?\w+"?\.)?"?\w+"?)*)/gi;
/** Any `create [unique] index [concurrently] [if not exists] <name> on <table>`: group 1 the index, group 2 the table. */
const NAMED_INDEX = /\bcreate\s+(?:unique\s+)?index\s+(?:concurrently\s+)?(?:if\s+not\s+exists\s+)?"?(\w+)"?\s+on\s+(?:only\s+)?"?(?:public"?\."?)?(\w+)"?/gi;
/** `create table` or `alter table` up to the statement's end: group 1 the verb, group 2 the table, group 3 the rest. */
const TABLE_STATEMENT = /\b(create|alter)\s+table\s+(?:if\s+(?:not\s+)?exists\s+)?(?:only\s+)?"?(?:public"?\."?)?(\w+)"?([^;]*)/gi;
/** A constraint that builds an index, named: group 1 the name (the index's too). */
const NAMED_KEY = /\bconstraint\s+"?(\w+)"?\s+(?:unique|primary\s+key|exclude)\b/gi;
/** In an ALTER TABLE, a constraint that builds its index under the table's ACCESS EXCLUSIVE lock (not `… using index <one built concurrently>`). */
const LOCKING_KEY = /(?<!["\w])(unique|primary\s+key|exclude)\b(?!\s+using\s+index\b)/gi;
/** IndexReplacementMigration's specs: `name: '…', table: '…'`. */
const INDEX_SPEC = /\bname:\s*['"`](\w+)['"`],\s*table:\s*['"`](\w+)['"`]/g;
const IGNORED_DIRS = new Set(['node_modules', 'dist', '.git', 'artifacts', 'coverage']);

export interface Violation {
  rule: 'layering' | 'cycle' | 'process-env' | 'thin-entrypoint' | 'index-migration';
  /** Repository-relative path with forward slashes. */
  file: string;
  line?: number;
  detail: string;
}

export interface ArchitectureResult {
  files: number;
  violations: Violation[];
}

const posix = (p: string) => p.split(sep).join('/');

function listTs(root: string): string[] {
  const out: string[] = [];
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      if (IGNORED_DIRS.has(name)) continue;
      const full = join(dir, name);
      if (statSync(full).isDirectory()) walk(full);
      else if (name.endsWith('.ts') && !name.endsWith('.d.ts')) out.push(posix(relative(root, full)));
    }
  };
  for (const d of SCANNED_DIRS) if (existsSync(join(root, d))) walk(join(root, d));
  for (const name of readdirSync(root)) if (name.endsWith('.ts') && statSync(join(root, name)).isFile()) out.push(name);
  return out.sort();
}

/** A relative specifier resolved to a project file (repository-relative), or undefined for packages and non-TS files. */
function resolveImport(root: string, from: string, spec: string, known: Set<string>): string | undefined {
  if (!spec.startsWith('.')) return undefined;
  const base = posix(relative(root, resolve(root, dirname(from), spec)));
  return [base, base.replace(/\.js$/, '.ts'), `${base}.ts`, `${base}/index.ts`].find((c) => known.has(c));
}

export const isEntrypoint = (f: string) => f === 'src/server.ts' || /^workers\/[^/]+\.ts$/.test(f) || /^src\/cli\/[^/]+\.ts$/.test(f);
const envAllowed = (f: string) => ENV_ALLOWED.includes(f) || f.startsWith('test/');

export function checkArchitecture(root: string): ArchitectureResult {
  const files = listTs(root);
  const known = new Set(files);
  const texts = new Map(files.map((f) => [f, readFileSync(join(root, f), 'utf8')]));
  const scanned = new Map<string, ScannedFile>(files.map((f) => [f, scanSource(f, texts.get(f)!)]));
  const violations: Violation[] = [];
  const indexes = knownIndexes(texts);
  for (const [file, text] of texts) if (isHeldMigration(file)) violations.push(...lockingIndexStatements(file, text, indexes));
  const graph = new Map<string, Array<{ to: string; line: number }>>();
  for (const [file, s] of scanned) {
    const edges: Array<{ to: string; line: number }> = [];
    for (const imp of s.imports) {
      const to = resolveImport(root, file, imp.specifier, known);
      if (!to) continue;
      if (file.startsWith('src/platform/') && !to.startsWith('src/platform/') && to.startsWith('src/')) {
        violations.push({ rule: 'layering', file, line: imp.line, detail: `imports '${imp.specifier}' (${to}): src/platform must not import ${to.startsWith('src/modules/') ? 'src/modules' : 'outside src/platform'}` });
      }
      if (isEntrypoint(file) && to.startsWith('src/modules/')) {
        violations.push({ rule: 'thin-entrypoint', file, line: imp.line, detail: `imports '${imp.specifier}' (${to}): entrypoints reach business code only through src/container.ts` });
      }
      if (!imp.typeOnly) edges.push({ to, line: imp.line });
    }
    graph.set(file, edges);
    if (!envAllowed(file)) {
      for (const line of s.envReads) violations.push({ rule: 'process-env', file, line, detail: `reads process.env: only ${ENV_ALLOWED[0]} may (use loadConfig)` });
    }
    if (isEntrypoint(file)) {
      if (s.codeLines > ENTRYPOINT_MAX_LINES) violations.push({ rule: 'thin-entrypoint', file, detail: `${s.codeLines} lines of code, more than ${ENTRYPOINT_MAX_LINES}: move the logic behind the container or into src/platform` });
      if (s.classes > 0) violations.push({ rule: 'thin-entrypoint', file, detail: `declares ${s.classes} class(es): entrypoints wire, they do not define behaviour` });
    }
  }
  violations.push(...findCycles(graph));
  return { files: files.length, violations };
}

const isMigration = (f: string) => /^migrations\/Migration\d{14}[^/]*\.ts$/.test(f);
const isHeldMigration = (f: string) => isMigration(f) && f.slice('migrations/'.length) >= CONCURRENT_INDEXES_SINCE;
const lineAt = (text: string, index: number) => text.slice(0, index).split('\n').length;

interface KnownIndexes {
  /** Index name → the table the migrations last built it on, and the migration's file name. */
  built: Map<string, { table: string; by: string }>;
  /** LARGE_TABLES and every table a migration creates, longest first (the longest prefix wins). */
  tables: string[];
}

/** Which table each index belongs to, from every migration's text (a DROP INDEX names only the index). */
function knownIndexes(texts: Map<string, string>): KnownIndexes {
  const built = new Map<string, { table: string; by: string }>();
  const tables = new Set(LARGE_TABLES);
  for (const [file, text] of texts) {
    if (!isMigration(file)) continue;
    const by = file.slice('migrations/'.length);
    for (const m of text.matchAll(NAMED_INDEX)) built.set(m[1]!.toLowerCase(), { table: m[2]!.toLowerCase(), by });
    for (const m of text.matchAll(INDEX_SPEC)) built.set(m[1]!.toLowerCase(), { table: m[2]!.toLowerCase(), by });
    for (const m of text.matchAll(TABLE_STATEMENT)) {
      if (m[1]!.toLowerCase() === 'create') tables.add(m[2]!.toLowerCase());
      for (const k of m[3]!.matchAll(NAMED_KEY)) built.set(k[1]!.toLowerCase(), { table: m[2]!.toLowerCase(), by });
    }
  }
  return { built, tables: [...tables].sort((a, b) => b.length - a.length) };
}

function indexTable(name: string, { built, tables }: KnownIndexes): { table: string; by: string } | undefined {
  const table = tables.find((t) => name.startsWith(`${t}_`));
  return built.get(name) ?? (table ? { table, by: 'by its name' } : undefined);
}

function lockingIndexStatements(file: string, text: string, indexes: KnownIndexes): Violation[] {
  const found: Array<{ index: number; detail: string }> = [];
  // A table this migration creates is empty while it runs: its indexes go with it, as generated.
  const createdHere = new Set([...text.matchAll(TABLE_STATEMENT)].filter((m) => m[1]!.toLowerCase() === 'create').map((m) => m[2]!.toLowerCase()));
  const large = (table: string) => LARGE_TABLES.includes(table.toLowerCase()) && !createdHere.has(table.toLowerCase());
  const own = 'in a migration of its own (replaceIndexConcurrently, src/platform/db/concurrent-index.ts)';
  for (const m of text.matchAll(PLAIN_CREATE_INDEX)) {
    if (large(m[1]!)) found.push({ index: m.index, detail: `builds an index on ${m[1]} with a plain CREATE INDEX, holding off its writes: build it concurrently, ${own}` });
  }
  for (const m of text.matchAll(TABLE_STATEMENT)) {
    if (m[1]!.toLowerCase() !== 'alter' || !large(m[2]!)) continue;
    const rest = m.index + m[0].length - m[3]!.length;
    for (const k of m[3]!.matchAll(LOCKING_KEY)) {
      found.push({ index: rest + k.index, detail: `builds a unique index on ${m[2]} with ALTER TABLE … ADD, locking out its reads and writes: build the index concurrently, ${own}, then ADD CONSTRAINT … USING INDEX` });
    }
  }
  for (const m of text.matchAll(PLAIN_DROP_INDEX)) {
    for (const name of m[1]!.split(',').map((n) => n.replace(/"/g, '').trim().split('.').pop()!.toLowerCase())) {
      const owner = indexTable(name, indexes);
      if (!owner || !large(owner.table)) continue;
      found.push({ index: m.index, detail: `drops ${name}, an index of ${owner.table} (${owner.by}), with a plain DROP INDEX, locking out its reads and writes until the migrations commit: drop it concurrently, ${own}` });
    }
  }
  return found.sort((a, b) => a.index - b.index).map(({ index, detail }) => ({ rule: 'index-migration' as const, file, line: lineAt(text, index), detail }));
}

/** Tarjan's strongly connected components; each component larger than one file (or a self-import) is reported once, as a concrete cycle. */
export function findCycles(graph: Map<string, Array<{ to: string; line: number }>>): Violation[] {
  let index = 0;
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const onStack = new Set<string>();
  const stack: string[] = [];
  const out: Violation[] = [];
  const strong = (v: string): void => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    onStack.add(v);
    for (const { to } of graph.get(v) ?? []) {
      if (!idx.has(to)) {
        strong(to);
        low.set(v, Math.min(low.get(v)!, low.get(to)!));
      } else if (onStack.has(to)) low.set(v, Math.min(low.get(v)!, idx.get(to)!));
    }
    if (low.get(v) !== idx.get(v)) return;
    const scc: string[] = [];
    let w: string;
    do {
      w = stack.pop()!;
      onStack.delete(w);
      scc.push(w);
    } while (w !== v);
    const self = graph.get(v)?.some((e) => e.to === v);
    if (scc.length > 1 || self) out.push(describeCycle(graph, new Set(scc), scc.sort()[0]!));
  };
  for (const v of [...graph.keys()].sort()) if (!idx.has(v)) strong(v);
  return out;
}

/** A shortest path from `start` back to itself inside one component, as "a.ts:3 → b.ts:7 → a.ts". */
function describeCycle(graph: Map<string, Array<{ to: string; line: number }>>, scc: Set<string>, start: string): Violation {
  const prev = new Map<string, { from: string; line: number }>();
  const queue = [start];
  let closing: { from: string; line: number } | undefined;
  while (queue.length && !closing) {
    const v = queue.shift()!;
    for (const e of graph.get(v) ?? []) {
      if (!scc.has(e.to)) continue;
      if (e.to === start) {
        closing = { from: v, line: e.line };
        break;
      }
      if (!prev.has(e.to)) {
        prev.set(e.to, { from: v, line: e.line });
        queue.push(e.to);
      }
    }
  }
  const hops: Array<{ file: string; line: number }> = [];
  let at = closing!.from;
  hops.unshift({ file: at, line: closing!.line });
  while (at !== start) {
    const p = prev.get(at)!;
    hops.unshift({ file: p.from, line: p.line });
    at = p.from;
  }
  const path = [...hops.map((h) => `${h.file}:${h.line}`), start].join(' → ');
  return { rule: 'cycle', file: start, line: hops[0]!.line, detail: `import cycle: ${path}` };
}

export function formatViolations(result: ArchitectureResult): string {
  if (!result.violations.length) return `architecture: ${result.files} files conform (layering, no cycles, config-only process.env, thin entrypoints, concurrent index migrations)`;
  const lines = result.violations.map((v) => `${v.file}${v.line ? `:${v.line}` : ''}  [${v.rule}]  ${v.detail}`);
  return [...lines, '', `architecture: ${result.violations.length} violation(s) in ${result.files} files`].join('\n');
}
