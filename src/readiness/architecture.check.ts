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
 *   inside the migrations' transaction; it builds it concurrently (src/platform/db/concurrent-index.ts;
 *   docs/runbook.md, *Migrate (outside a deploy)*). The earlier migrations have run as they are.
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
  for (const [file, text] of texts) if (isHeldMigration(file)) violations.push(...plainIndexBuilds(file, text));
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

const isHeldMigration = (f: string) => /^migrations\/Migration\d{14}[^/]*\.ts$/.test(f) && f.slice('migrations/'.length) >= CONCURRENT_INDEXES_SINCE;

function plainIndexBuilds(file: string, text: string): Violation[] {
  return [...text.matchAll(PLAIN_CREATE_INDEX)]
    .filter((m) => LARGE_TABLES.includes(m[1]!.toLowerCase()))
    .map((m) => ({
      rule: 'index-migration' as const,
      file,
      line: text.slice(0, m.index).split('\n').length,
      detail: `builds an index on ${m[1]} with a plain CREATE INDEX, holding off its writes: build it concurrently, in a migration of its own (replaceIndexConcurrently, src/platform/db/concurrent-index.ts)`,
    }));
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
