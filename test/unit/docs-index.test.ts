import { describe, expect, it } from 'vitest';
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const path = (p: string) => fileURLToPath(new URL(`../../${p}`, import.meta.url));
const read = (p: string) => readFileSync(path(p), 'utf8');

/**
 * The indexes a new reader follows: the README's documentation list and the architecture page's ADR
 * list. A document or decision added without a link there is one nobody finds (runtime.md, runbook.md
 * and ADR 0009 were missing).
 */
describe('documentation indexes', () => {
  it('the README links every page of docs/', () => {
    const readme = read('README.md');
    const pages = readdirSync(path('docs')).filter((f) => f.endsWith('.md'));
    expect(pages.filter((f) => !readme.includes(`](docs/${f})`))).toEqual([]);
  });

  it("the README's layout names every directory of src/platform and src/modules, and every command of src/cli", () => {
    const readme = read('README.md');
    const layout = readme.slice(readme.indexOf('## Layout'), readme.indexOf('\n## ', readme.indexOf('## Layout') + 1));
    const line = (start: string) => layout.split('\n').find((l) => l.trimStart().startsWith(start))!;
    const dirs = (p: string) => readdirSync(path(p), { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name);
    const platform = layout.split('\n')[layout.split('\n').indexOf(line('platform/')) + 1]!;
    expect(dirs('src/platform').filter((d) => !platform.split(/\s+/).includes(`${d}/`))).toEqual([]);
    expect(dirs('src/modules').filter((d) => !line('modules/').includes(`${d}/`))).toEqual([]);
    const cli = readdirSync(path('src/cli')).filter((f) => f.endsWith('.ts')).map((f) => f.slice(0, -3));
    expect(cli.filter((c) => !line('cli/').split(/[\s,]+/).includes(c))).toEqual([]);
  });

  it('the README links every ADR (ADR 0016 was missing from its list)', () => {
    const readme = read('README.md');
    const adrs = readdirSync(path('docs/adr')).filter((f) => /^\d{4}-.*\.md$/.test(f));
    expect(adrs.filter((f) => !readme.includes(`](docs/adr/${f})`))).toEqual([]);
  });

  it('docs/architecture.md links every ADR', () => {
    const architecture = read('docs/architecture.md');
    const adrs = readdirSync(path('docs/adr')).filter((f) => /^\d{4}-.*\.md$/.test(f));
    expect(adrs.length).toBeGreaterThan(0);
    expect(adrs.filter((f) => !architecture.includes(`](adr/${f})`))).toEqual([]);
  });
});
