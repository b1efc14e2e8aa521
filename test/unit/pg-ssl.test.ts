import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../../src/platform/config/config.ts';
import { pgSsl } from '../../src/platform/db/pg-ssl.ts';

/** The URL's libpq TLS parameters (src/platform/db/pg-ssl.ts); a real server's answers are in test/integration/database-ssl.test.ts. */
const SECRET = 'test-secret-test-secret-test-secret-0001';
const url = (query: string) => `postgres://u:p@db.example.com:5432/dealix${query}`;

function configError(env: Record<string, string>): string {
  try {
    parseConfig({ JWT_SECRET: SECRET, ...env });
  } catch (e) {
    if (e instanceof ConfigError) return e.message;
    throw e;
  }
  throw new Error('parseConfig accepted the environment');
}

describe('database TLS from the URL', () => {
  it('require encrypts without checking the certificate; verify-full checks it against the URL host', () => {
    expect(pgSsl(url('')).ssl).toBe(false);
    expect(pgSsl(url('?sslmode=disable')).ssl).toBe(false);
    expect(pgSsl(url('?sslmode=require')).ssl).toEqual({ rejectUnauthorized: false });
    const full = pgSsl(url('?sslmode=verify-full&application_name=api'));
    expect(full.ssl && full.ssl.rejectUnauthorized).toBeUndefined();
    // The TLS parameters leave the URL given to pg (which would read them its own way); the others stay.
    expect(full.url).toBe(url('?application_name=api'));
  });

  it('a mode pg cannot honour, or an unknown one, stops the start with the setting named', () => {
    expect(configError({ DATABASE_URL: url('?sslmode=prefer') })).toMatch(/DATABASE_URL: sslmode=prefer falls back .* say sslmode=require/);
    expect(configError({ MIGRATION_DATABASE_URL: url('?sslmode=allow') })).toMatch(/MIGRATION_DATABASE_URL: sslmode=allow/);
    expect(configError({ DATABASE_ADMIN_URL: url('?sslmode=verify') })).toMatch(/unknown sslmode=verify/);
    expect(configError({ DATABASE_URL: url('?ssl=true') })).toMatch(/`ssl` parameter is not read/);
    expect(configError({ DATABASE_URL: url('?sslmode=require&sslrootcert=system') })).toMatch(/sslrootcert=system requires sslmode=verify-full/);
    expect(parseConfig({ JWT_SECRET: SECRET, DATABASE_URL: url('?sslmode=require') }).DATABASE_URL).toBe(url('?sslmode=require'));
  });
});
