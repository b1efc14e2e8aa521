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

  it('docs/architecture.md links every ADR', () => {
    const architecture = read('docs/architecture.md');
    const adrs = readdirSync(path('docs/adr')).filter((f) => /^\d{4}-.*\.md$/.test(f));
    expect(adrs.length).toBeGreaterThan(0);
    expect(adrs.filter((f) => !architecture.includes(`](adr/${f})`))).toEqual([]);
  });
});
