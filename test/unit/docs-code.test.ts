import { describe, expect, it } from 'vitest';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { basename } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createMetrics } from '../../src/platform/telemetry/metrics.ts';

const path = (p: string) => fileURLToPath(new URL(`../../${p}`, import.meta.url));
const read = (p: string) => readFileSync(path(p), 'utf8');
const walk = (dir: string, suffix: string): string[] =>
  readdirSync(path(dir)).flatMap((f) => (statSync(path(`${dir}/${f}`)).isDirectory() ? walk(`${dir}/${f}`, suffix) : f.endsWith(suffix) ? [`${dir}/${f}`] : []));

/** What an operator or the next engineer reads: the README and every page under docs/. */
const documents = ['README.md', ...walk('docs', '.md')];

/** The lines of a markdown table that follow `heading` (up to the next heading of that level or higher), as cells. */
function tableUnder(doc: string, heading: string): string[][] {
  const text = read(doc);
  const start = text.indexOf(`\n${heading}\n`);
  expect(start, `${doc}: ${heading}`).toBeGreaterThan(-1);
  const level = heading.indexOf(' ');
  const next = text.slice(start + heading.length + 2).search(new RegExp(`\\n#{1,${level}} `));
  const section = next < 0 ? text.slice(start) : text.slice(start, start + heading.length + 2 + next);
  return section
    .split('\n')
    .filter((l) => l.startsWith('| `'))
    .map((l) => l.split(/(?<!\\)\|/).slice(1, -1).map((c) => c.trim()));
}

const ticked = (cell: string) => [...cell.matchAll(/`([^`]+)`/g)].map((m) => m[1]!);

/**
 * Each readiness component the code can report, read from src/readiness: the first argument of
 * pass/fail/row/guarded, a literal or the literal start of a template (`rls ${table}` → `rls `).
 * A row is a name some check can PASS; the rest (`live-system`, a group that could not be computed)
 * only ever FAIL.
 */
function readinessComponents(): { name: string; templated: boolean; row: boolean }[] {
  const found = new Map<string, { name: string; templated: boolean; row: boolean }>();
  for (const file of walk('src/readiness', '.ts')) {
    for (const m of read(file).matchAll(/\b(pass|fail|row|guarded)\((?:'([^']+)'|`([^`$]*)\$\{)/g)) {
      const name = m[2] ?? m[3]!;
      const seen = found.get(name) ?? { name, templated: m[3] !== undefined, row: false };
      seen.row ||= m[1] === 'pass' || m[1] === 'row';
      found.set(name, seen);
    }
  }
  return [...found.values()];
}

const produces = (c: { name: string; templated: boolean }, documented: string) => (c.templated ? documented.startsWith(c.name) : documented === c.name);

describe('documents against the code', () => {
  it('the runbook explains every readiness component the matrix can report, and no other', () => {
    const components = readinessComponents();
    expect(components.length).toBeGreaterThan(20);
    const documented = tableUnder('docs/runbook.md', '## Reading the readiness matrix').flatMap((r) => ticked(r[0]!));
    expect(components.filter((c) => !documented.some((d) => produces(c, d))).map((c) => c.name), 'reported by src/readiness but without a row in the runbook\'s table: add one').toEqual([]);
    expect(documented.filter((d) => !components.some((c) => produces(c, d))), 'in the runbook\'s table but reported by no check of src/readiness: remove or rename the row').toEqual([]);
  });

  it('the release gates list every readiness row (a component some check can PASS), and no other', () => {
    const rows = readinessComponents().filter((c) => c.row);
    const documented = tableUnder('docs/governance/release-gates.md', '## Gate 2: the readiness matrix, all PASS, against a freshly migrated stack').flatMap((r) => ticked(r[0]!));
    expect(rows.filter((c) => !documented.some((d) => produces(c, d))).map((c) => c.name), 'a row some check of src/readiness can PASS, missing from the release gates\' table: add it').toEqual([]);
    expect(documented.filter((d) => !rows.some((c) => produces(c, d))), 'in the release gates\' table but no check of src/readiness can PASS it (renamed, removed, or a FAIL-only component): remove or rename it').toEqual([]);
  });

  it("operations.md's metrics table names every series a process registers, with its type and labels, and no other", () => {
    const namesOf = (process: 'api' | 'worker') => new Set(createMetrics(process).registry.getMetricsAsArray().map((m) => (m as unknown as { name: string }).name));
    const [onApi, onWorkers] = [namesOf('api'), namesOf('worker')];
    const registered = createMetrics('tool').registry.getMetricsAsArray().map((m) => {
      const metric = m as unknown as { name: string; labelNames: string[] };
      // The "where" column starts with the process type that exposes it.
      const where = onApi.has(metric.name) && onWorkers.has(metric.name) ? 'every process' : onApi.has(metric.name) ? 'API' : 'workers';
      return { name: metric.name, type: m.constructor.name.toLowerCase(), labels: [...metric.labelNames].sort().join(', '), where };
    });
    const rows = tableUnder('docs/operations.md', '## Metrics').map((cells) => {
      const [first, ...more] = ticked(cells[0]!);
      // `…_groups_total` after a full name stands for that name's stem (all but its last two words) and this tail.
      const stem = first!.split('_').slice(0, -2).join('_');
      const names = [first!, ...more.map((n) => (n.startsWith('…') ? stem + n.slice(1) : n))];
      // The labels column: each label in backticks, its values in parentheses after it.
      return { names, type: cells[1]!, labels: ticked(cells[2]!.replace(/\([^)]*\)/g, '')).sort().join(', '), where: cells[3]! };
    });
    const documents = (name: string, metric: string) => (name.endsWith('*') ? metric.startsWith(name.slice(0, -1)) : metric === name);
    const rowOf = (metric: string) => rows.find((r) => r.names.some((n) => documents(n, metric)));
    expect(registered.filter((m) => !rowOf(m.name)).map((m) => m.name), 'registered by createMetrics but not in operations.md ## Metrics: add a row').toEqual([]);
    expect(rows.flatMap((r) => r.names).filter((n) => !registered.some((m) => documents(n, m.name))), 'in operations.md ## Metrics but registered by no process: remove or rename the row').toEqual([]);
    const described = registered.map((m) => ({ ...m, row: rowOf(m.name)! })).filter((m) => m.row.type !== '');
    expect(described.filter((m) => m.row.type !== m.type).map((m) => `${m.name}: ${m.type}, documented ${m.row.type}`)).toEqual([]);
    expect(described.filter((m) => m.row.labels !== m.labels).map((m) => `${m.name}: [${m.labels}], documented [${m.row.labels}]`)).toEqual([]);
    const exposedBy = registered.map((m) => ({ ...m, row: rowOf(m.name)! })).filter((m) => !m.row.where.startsWith(m.where));
    expect(exposedBy.map((m) => `${m.name}: exposed by ${m.where}, documented "${m.row.where.slice(0, 20)}…"`), 'the "where" column starts with the process type that exposes it').toEqual([]);
  });

  it('the API, worker and migration command lines are the same in package.json, Procfile, docker-compose.yml, the Dockerfile and the runbook', () => {
    const scripts = (JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts;
    // A launch line as `ENV=value … node <args>`: the environment it sets (read by the C library as the process
    // starts: MALLOC_ARENA_MAX, never from .env) and node's arguments, in every place a process is started from.
    const launch = (line: string, runner: RegExp) => {
      const m = new RegExp(`^((?:[A-Z][A-Z0-9_]*=\\S+ )*)${runner.source}(.*)$`).exec(line.trim());
      expect(m, `not a launch line: ${line}`).not.toBeNull();
      return `${m![1]!.split(' ').filter((kv) => kv && !kv.startsWith('WORKER_QUEUES=')).map((kv) => `${kv} `).join('')}${m![2]!}`;
    };
    const npm = (name: string) => launch(scripts[name]!, /sh \.ci\/node (?:--env-file-if-exists=\.env )?/);
    const procfile = Object.fromEntries(read('Procfile').trim().split('\n').map((l) => [l.slice(0, l.indexOf(':')), launch(l.slice(l.indexOf(':') + 1), /node /)]));
    const compose = read('docker-compose.yml');
    const composeCommand = (service: string) => {
      const m = new RegExp(`\\n  ${service}:\\n((?:    .*\\n|\\s*\\n)*?)    command: (\\[.*\\])((?:\\n    .*)*)`).exec(compose);
      expect(m, `docker-compose.yml: the service ${service} has no one-line JSON-array command`).not.toBeNull();
      // The service's own environment entries under `environment:` (beside the shared anchor it merges):
      // `KEY: value` (quoted or not) or `- KEY=value`; a key under another of the service's blocks is not one.
      const block = /^    environment:\n((?: {6,}.*\n?)*)/m.exec(`${m![1]!}${m![3]!.replace(/^\n/, '')}\n`)?.[1] ?? '';
      const env = [...block.matchAll(/^      (?:- )?([A-Z][A-Z0-9_]*)(?:: |=)"?([^"\n]*?)"?$/gm)].map(([, k, v]) => `${k}=${v} `).join('');
      return `${env}${(JSON.parse(m![2]!) as string[]).slice(1).join(' ')}`;
    };
    const dockerfile = (JSON.parse(/^CMD (\[.*\])$/m.exec(read('Dockerfile'))![1]!) as string[]).slice(1).join(' ');
    const runbookWorkers = [...read('docs/runbook.md').matchAll(/^[\w-]+: ((?:[A-Z][A-Z0-9_]*=\S+ )*node .*workers\/golden-path\.worker\.ts)$/gm)].map((m) => launch(m[1]!, /node /));
    expect(runbookWorkers.length).toBeGreaterThan(0);
    expect([procfile.web, dockerfile]).toEqual([npm('start:api'), npm('start:api')]);
    expect([procfile.worker, composeCommand('worker'), ...runbookWorkers]).toEqual(Array(2 + runbookWorkers.length).fill(npm('start:worker')));
    expect(npm('start:worker')).toMatch(/^MALLOC_ARENA_MAX=2 --max-semi-space-size=8 /);
    expect([procfile.release, composeCommand('migrate')]).toEqual([npm('db:migrate'), npm('db:migrate')]);
  });

  it('the Docker image holds every file that an npm script running the application names (`npm run token`, `readiness`, `db:*` inside the container)', () => {
    const scripts = (JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts;
    const copied = [...read('Dockerfile').matchAll(/^COPY (.+) \S+$/gm)].flatMap((m) => m[1]!.split(/\s+/)).filter((s) => !s.startsWith('--'));
    const inImage = (file: string) => copied.some((c) => file === c || file.startsWith(`${c.replace(/\/$/, '')}/`));
    const files = (command: string) => command.split(/\s+/).filter((t) => /^(\.\/)?\.?[\w-]+\/[\w./-]+$/.test(t)).map((t) => t.replace(/^\.\//, ''));
    // The scripts whose entry (a .ts file) the image carries: the API, the worker, the CLIs. Tests, bench and chaos it does not.
    const app = Object.entries(scripts).filter(([, command]) => {
      const entries = files(command).filter((f) => f.endsWith('.ts'));
      return entries.length > 0 && entries.every(inImage);
    });
    expect(app.map(([name]) => name)).toEqual(expect.arrayContaining(['start:api', 'start:worker', 'db:migrate', 'token', 'readiness']));
    expect(
      app.flatMap(([name, command]) => files(command).filter((f) => !inImage(f)).map((f) => `${name}: ${f}`)),
      'named by an npm script of the application but not COPY\'d into the image by the Dockerfile: `npm run` of it fails in the container',
    ).toEqual([]);
  });

  it('operations.md names every security and ops event the code logs, and the documents name no other', () => {
    const source = [...walk('src', '.ts'), ...walk('workers', '.ts')].map(read).join('\n');
    const logged = [...new Set([...source.matchAll(/\b(?:security|ops)_event: '([a-z_]+)'/g)].map((m) => m[1]!))];
    expect(logged.length).toBeGreaterThan(5);
    const operations = read('docs/operations.md');
    expect(logged.filter((e) => !operations.includes(`\`${e}\``) && !operations.includes(`_event: ${e}\``)), 'logged by src or workers but not named in operations.md: document the event').toEqual([]);
    const named = documents.flatMap((doc) => [...read(doc).matchAll(/\b(?:security|ops)_event: ([a-z_]+)/g)].map((m) => ({ doc, event: m[1]! })));
    expect(named.length).toBeGreaterThan(5);
    expect(named.filter((n) => !logged.includes(n.event)).map((n) => `${n.doc}: ${n.event}`), 'named by a document but logged nowhere in src or workers: rename or remove it').toEqual([]);
  });

  it('every log message the documents quote (logs `…`, warns `…`, a warning `…`, the info line `…`) is a literal of the code', () => {
    const source = [...walk('src', '.ts'), ...walk('workers', '.ts')].map(read).join('\n');
    // pino-http writes this one, not our code.
    const library = ['request completed'];
    const quoted = documents.flatMap((doc) =>
      [...read(doc).replace(/\s+/g, ' ').matchAll(/\b(?:logs?|logged as|warns?|warning|error|info(?: line)?|line|message|msg:) (?:once |it as |a warning |an? (?:info|error|warning) (?:line )?)?[`"]([^`"]{6,})[`"]/g)]
        .map((m) => ({ doc, message: m[1]! }))
        .filter((q) => !/^(security|ops)_event: /.test(q.message) && !library.includes(q.message)),
    );
    expect(quoted.length).toBeGreaterThan(20);
    const missing = quoted.filter((q) =>
      !q.message
        .split('…')
        .map((s) => s.trim())
        .filter(Boolean)
        .every((piece) => source.includes(piece)),
    );
    expect(
      missing.map((q) => `${q.doc}: ${q.message}`),
      'quoted after logs/warns/warning/error/info/line/message as a log message, but not a literal of src or workers: quote the code\'s message (… for its variable parts), or word the sentence so that it does not read as a log quote',
    ).toEqual([]);
  });

  it('every `npm run <script>` the documents mention is a script of package.json', () => {
    const scripts = Object.keys((JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts);
    const named = documents.flatMap((doc) => [...read(doc).matchAll(/npm run ([a-z][\w:-]*[\w-])/g)].map((m) => `${doc}: ${m[1]!}`));
    expect(named.length).toBeGreaterThan(10);
    expect(named.filter((n) => !scripts.includes(n.split(': ')[1]!))).toEqual([]);
  });

  const testFiles = walk('test', '.test.ts');
  /** A test file a document names, by path (`test/…`) or by file name. */
  const filesNamed = (cited: string) => (cited.startsWith('test/') ? testFiles.filter((f) => f === cited) : testFiles.filter((f) => basename(f) === basename(cited) && f.endsWith(cited)));

  it('every test file the documents cite exists (by path, or by file name under test/)', () => {
    const cited = documents.flatMap((doc) => [...read(doc).matchAll(/([\w./-]+\.test\.ts)\b/g)].map((m) => ({ doc, file: m[1]! })));
    expect(cited.length).toBeGreaterThan(50);
    expect(cited.filter((c) => filesNamed(c.file).length === 0).map((c) => `${c.doc}: ${c.file}`)).toEqual([]);
  });

  it('every test title the documents quote after a test file ("…" or *…*, across a line break too) is in that file (an … stands for words left out)', () => {
    const quoted = documents.flatMap((doc) =>
      [...read(doc).replace(/\s+/g, ' ').matchAll(/([\w./-]+\.test\.ts)`?(?:,|:| \()? ?(?:"([^"]{6,})"|\*([^*]{6,})\*)/g)].map((m) => ({ doc, file: m[1]!, title: (m[2] ?? m[3])! })),
    );
    expect(quoted.length).toBeGreaterThan(25);
    const missing = quoted.filter(({ file, title }) => {
      const source = filesNamed(file)
        .map((f) => read(f).replace(/\\'/g, "'"))
        .join('\n');
      return !title
        .split('…')
        .map((s) => s.trim())
        .filter(Boolean)
        .every((piece) => source.includes(piece));
    });
    expect(missing.map((q) => `${q.doc}: ${q.file} "${q.title}"`)).toEqual([]);
  });
});

