import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { PUBLISHED_JWT_SECRETS, configSchema } from '../../src/platform/config/config.ts';

const read = (path: string) => readFileSync(fileURLToPath(new URL(`../../${path}`, import.meta.url)), 'utf8');
const variables = Object.keys(configSchema.shape);

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

  it('the README table names no variable the schema does not read (OTEL_* aside: the SDK reads the rest)', () => {
    const named = [...readmeConfigTable().matchAll(/`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)`/g)].map((m) => m[1]!);
    expect([...new Set(named)].filter((v) => !variables.includes(v) && !v.startsWith('OTEL_'))).toEqual([]);
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
