import { describe, expect, it } from 'vitest';
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { PUBLISHED_DATABASE_PASSWORDS, PUBLISHED_JWT_SECRETS, configSchema, parseConfig } from '../../src/platform/config/config.ts';

const read = (path: string) => readFileSync(fileURLToPath(new URL(`../../${path}`, import.meta.url)), 'utf8');
const variables = Object.keys(configSchema.shape);

/** What the configuration module reads: the schema's variables and the OpenTelemetry ones its telemetry bootstrap reads raw. */
const configSource = read('src/platform/config/config.ts');
const readByConfig = [...new Set([...variables, ...[...configSource.matchAll(/\b(OTEL_[A-Z0-9_]*[A-Z0-9])\b/g)].map((m) => m[1]!)])];

/** The README and every page under docs/ (ADRs and governance included). */
const documents = ['README.md', ...readdirSync(fileURLToPath(new URL('../../docs', import.meta.url)), { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];

/** .env.example's variable lines, set (`NAME=value`) or shown commented out (`# NAME=value`), with the comment lines just above. */
function exampleEntries(): { name: string; value: string; set: boolean; comment: string }[] {
  const lines = read('.env.example').split('\n');
  return lines.flatMap((line, i) => {
    const m = /^(# ?)?([A-Z][A-Z0-9_]*)=(\S*)(.*)$/.exec(line);
    if (!m) return [];
    const above: string[] = [];
    for (let j = i - 1; j >= 0 && /^# (?![A-Z][A-Z0-9_]*=)(?!---)/.test(lines[j]!); j--) above.unshift(lines[j]!);
    return [{ name: m[2]!, value: m[3]!, set: !m[1], comment: [...above, m[4]!.replace(/^\s*#?/, '')].join(' ').trim() }];
  });
}

/** The README's configuration table: the rows between "## Configuration" and the next heading. */
function readmeConfigTable(): string {
  const readme = read('README.md');
  const start = readme.indexOf('## Configuration');
  const end = readme.indexOf('\n## ', start + 1);
  return readme.slice(start, end < 0 ? undefined : end);
}

describe('configuration documents', () => {
  it('the README configuration table names every variable of the schema (operators read it, not config.ts)', () => {
    const table = readmeConfigTable();
    expect(variables.filter((v) => !table.includes(`\`${v}\``))).toEqual([]);
  });

  it('.env.example sets or shows every variable of the schema', () => {
    const example = read('.env.example');
    expect(variables.filter((v) => !new RegExp(`^#? ?${v}=`, 'm').test(example))).toEqual([]);
  });

  it('.env.example names no variable the configuration does not read, and every one it reads', () => {
    const names = exampleEntries().map((e) => e.name);
    expect(names.filter((v) => !readByConfig.includes(v))).toEqual([]);
    expect(readByConfig.filter((v) => !names.includes(v))).toEqual([]);
  });

  it('every variable in .env.example says what it means (a comment on its line or just above)', () => {
    expect(exampleEntries().filter((e) => e.comment === '').map((e) => e.name)).toEqual([]);
  });

  it(".env.example's values are the defaults, except the three it sets on purpose, and every value it shows is valid", () => {
    const entries = exampleEntries();
    const onPurpose = ['JWT_SECRET', 'OTEL_SDK_DISABLED', 'DATABASE_ADMIN_URL'];
    const example = parseConfig(Object.fromEntries(entries.filter((e) => e.set).map((e) => [e.name, e.value]))) as Record<string, unknown>;
    const defaults = parseConfig({ JWT_SECRET: PUBLISHED_JWT_SECRETS[0]! }) as Record<string, unknown>;
    expect(variables.filter((v) => !onPurpose.includes(v) && JSON.stringify(example[v]) !== JSON.stringify(defaults[v]))).toEqual([]);
    // Settings that take a companion: the operator login's pair; an acceptance's note (shown commented out beside it).
    const companions: Record<string, Record<string, string>> = {
      OPERATOR_: { OPERATOR_USER: 'ops', OPERATOR_PASSWORD: 'a-long-operator-password' },
      READINESS_ACCEPT_UNKNOWN: { READINESS_ACCEPT_NOTE: 'verified by ops' },
    };
    const companionOf = (name: string) => Object.entries(companions).find(([prefix]) => name.startsWith(prefix))?.[1] ?? {};
    for (const e of entries.filter((x) => !x.set && variables.includes(x.name))) {
      expect(() => parseConfig({ JWT_SECRET: PUBLISHED_JWT_SECRETS[0]!, ...companionOf(e.name), [e.name]: e.value }), e.name).not.toThrow();
    }
  });

  it('every configuration table of the documents (`| variable | default |`, `| setting | default |`) states the default the schema applies', () => {
    const defaults = parseConfig({ JWT_SECRET: PUBLISHED_JWT_SECRETS[0]! }) as Record<string, unknown>;
    const stated: { where: string; name: string; value: string }[] = [];
    for (const doc of documents) {
      const lines = read(doc).split('\n');
      lines.forEach((header, i) => {
        if (!/^\| (variable|setting) \| default \|/.test(header)) return;
        for (let j = i + 2; j < lines.length && lines[j]!.startsWith('|'); j++) {
          const [names, values] = lines[j]!.split(/(?<!\\)\|/).slice(1, 3).map((c) => c.trim());
          const schema = [...names!.matchAll(/`([A-Z][A-Z0-9_]*)`/g)].map((m) => m[1]!).filter((v) => variables.includes(v));
          // `A` / `B` rows state one default each, in order; a value is a literal in backticks or a bare number, anything else (unset …) is prose.
          const each = schema.length > 1 ? values!.split(' / ') : [values!];
          schema.forEach((name, k) => {
            const m = /^(?:`([^`]*)`|(\d+))(?!\S)/.exec(each[k]?.trim() ?? '');
            if (m && defaults[name] !== undefined) stated.push({ where: `${doc}:${j + 1}`, name, value: m[1] ?? m[2]! });
          });
        }
      });
    }
    expect(stated.length).toBeGreaterThan(60);
    const differ = stated.filter(({ name, value }) => JSON.stringify((parseConfig({ JWT_SECRET: PUBLISHED_JWT_SECRETS[0]!, [name]: value }) as Record<string, unknown>)[name]) !== JSON.stringify(defaults[name]));
    expect(differ.map((d) => `${d.where} ${d.name}: ${d.value}`)).toEqual([]);
  });

  it('every default the documents state in prose (`NAME` (default `x`), `NAME`, default 2 s) is the schema\'s', () => {
    const defaults = parseConfig({ JWT_SECRET: PUBLISHED_JWT_SECRETS[0]! }) as Record<string, unknown>;
    const stated = documents.flatMap((doc) =>
      [...read(doc).replace(/\s+/g, ' ').matchAll(/`([A-Z][A-Z0-9_]+)`,? \(?default:? (?:`([^`]+)`|(\d+(?: ?(?:ms|s|m|h|d))?)\b)/g)]
        .map((m) => ({ doc, name: m[1]!, value: (m[2] ?? m[3]!).replace(' ', '') }))
        // A variable without a schema default (DATABASE_ADMIN_URL: db:setup's own fallback) is stated by the code that reads it.
        .filter((s) => variables.includes(s.name) && defaults[s.name] !== undefined),
    );
    expect(stated.length).toBeGreaterThan(10);
    const differ = stated.filter(({ name, value }) => {
      try {
        return JSON.stringify((parseConfig({ JWT_SECRET: PUBLISHED_JWT_SECRETS[0]!, [name]: value }) as Record<string, unknown>)[name]) !== JSON.stringify(defaults[name]);
      } catch {
        return true;
      }
    });
    expect(differ.map((d) => `${d.doc}: ${d.name} default ${d.value}`)).toEqual([]);
  });

  it("the README table states every integer variable's range as the schema has it (the first a–b of its row), and one for each the schema bounds above; so does .env.example where it gives one", () => {
    const parses = (name: string, value: string) => {
      const operator = name.startsWith('OPERATOR_') ? { OPERATOR_USER: 'ops', OPERATOR_PASSWORD: 'a-long-operator-password' } : {};
      try {
        return (parseConfig({ JWT_SECRET: PUBLISHED_JWT_SECRETS[0]!, ...operator, [name]: value }) as Record<string, unknown>)[name] === Number(value);
      } catch {
        return false;
      }
    };
    const isRange = (name: string, min: number, max: number) => parses(name, String(min)) && parses(name, String(max)) && !parses(name, String(min - 1)) && !parses(name, String(max + 1));
    // An integer variable reads "7" as 7 (a duration reads it as 7 s, in ms).
    const integers = variables.filter((v) => parses(v, '7'));
    expect(integers.length).toBeGreaterThan(15);
    const rows = readmeConfigTable()
      .split('\n')
      .filter((l) => l.startsWith('| `'))
      .map((l) => l.split(/(?<!\\)\|/).map((c) => c.trim()));
    const problems: string[] = [];
    for (const name of integers) {
      const row = rows.find((r) => r[1]!.includes(`\`${name}\``));
      if (!row) {
        problems.push(`${name}: no row in the README table`);
        continue;
      }
      const range = /(\d[\d,]*)–(\d[\d,]*)/.exec(row[3]!);
      if (!range) {
        if (parses(name, '1000000000')) continue;
        problems.push(`${name}: no range, the schema has a maximum`);
        continue;
      }
      const [min, max] = [Number(range[1]!.replace(/,/g, '')), Number(range[2]!.replace(/,/g, ''))];
      if (!isRange(name, min, max)) problems.push(`${name}: ${range[0]} is not the schema's range`);
    }
    // .env.example's comments write a range a-b where they give one.
    let exampleRanges = 0;
    for (const e of exampleEntries().filter((x) => integers.includes(x.name))) {
      const range = /\b(\d+)-(\d+)\b/.exec(e.comment);
      if (!range) continue;
      exampleRanges++;
      if (!isRange(e.name, Number(range[1]), Number(range[2]))) problems.push(`.env.example ${e.name}: ${range[0]} is not the schema's range`);
    }
    expect(exampleRanges, ".env.example's a-b ranges read").toBeGreaterThan(2);
    expect(problems).toEqual([]);
  });

  it('the README table names no variable the schema does not read (OTEL_* aside: the SDK reads the rest)', () => {
    const named = [...readmeConfigTable().matchAll(/`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)`/g)].map((m) => m[1]!);
    expect([...new Set(named)].filter((v) => !variables.includes(v) && !v.startsWith('OTEL_'))).toEqual([]);
  });

  it("docker-compose.yml's application environment names only variables the configuration reads", () => {
    const compose = read('docker-compose.yml');
    const block = compose.slice(compose.indexOf('x-app-env:'), compose.indexOf('\nservices:'));
    const named = [...block.matchAll(/^ {2}([A-Z][A-Z0-9_]*):/gm)].map((m) => m[1]!);
    expect(named.length).toBeGreaterThan(5);
    expect(named.filter((v) => !readByConfig.includes(v))).toEqual([]);
  });

  it('every database password the repository publishes is known as published (the readiness row database-credentials refuses it in production)', () => {
    const published = [
      ...[...read('migrations/bootstrap/roles.sql').matchAll(/PASSWORD '([^']+)'/g)].map((m) => m[1]!),
      ...[...read('.env.example').matchAll(/^[A-Z_]*DATABASE_URL=postgres:\/\/[^:@\s]+:([^@\s]+)@/gm)].map((m) => m[1]!),
      ...[...read('docker-compose.yml').matchAll(/DATABASE_URL: postgres:\/\/[^:@\s]+:([^@\s]+)@/g)].map((m) => m[1]!),
    ];
    expect(published.length).toBe(6);
    expect(published.filter((s) => !PUBLISHED_DATABASE_PASSWORDS.includes(s))).toEqual([]);
  });

  it('every JWT secret the repository publishes is known as published (the readiness row jwt-keys refuses it)', () => {
    const published = [
      ...[...read('.env.example').matchAll(/^JWT_SECRET=(\S+)/gm)].map((m) => m[1]!),
      ...[...read('docker-compose.yml').matchAll(/JWT_SECRET:-([^}\s]+)\}/g)].map((m) => m[1]!),
    ];
    expect(published.length).toBe(2);
    expect(published.filter((s) => !PUBLISHED_JWT_SECRETS.includes(s))).toEqual([]);
  });
});
