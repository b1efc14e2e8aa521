import { describe, expect, it } from 'vitest';
import { databaseProblem } from '../../src/platform/db/connection-problem.ts';

const URL = 'postgres://dealix_owner:secret@db.internal:5432/dealix';

/** A socket error as node's net module raises it. */
const socketError = (code: string, syscall = 'connect') => Object.assign(new Error(`${syscall} ${code} 10.0.0.7:5432`), { code, syscall });

describe('databaseProblem (one-line start failures of db:* and the demo)', () => {
  // The host down or off the network, a resolver failing for now, a connection cut: each is "not
  // reachable", naming the setting — not the bare stack trace of an error it does not know.
  it.each(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNRESET'])('%s is PostgreSQL not reachable', (code) => {
    const e = socketError(code, code === 'ENOTFOUND' || code === 'EAI_AGAIN' ? 'getaddrinfo' : 'connect');
    expect(databaseProblem(e, 'MIGRATION_DATABASE_URL', URL)).toBe(`PostgreSQL is not reachable at db.internal:5432 (${e.message}). Start it, or point MIGRATION_DATABASE_URL at it.`);
  });

  it("pg's own connect timeout and hang-up are not reachable too; a failed statement is left to the caller", () => {
    expect(databaseProblem(new Error('timeout expired'), 'DATABASE_URL', URL)).toMatch(/^PostgreSQL is not reachable at db\.internal:5432 \(timeout expired\)/);
    expect(databaseProblem(new Error('Connection terminated unexpectedly'), 'DATABASE_URL', URL)).toMatch(/^PostgreSQL is not reachable/);
    expect(databaseProblem(Object.assign(new Error('syntax error at or near "selec"'), { code: '42601' }), 'DATABASE_URL', URL)).toBeUndefined();
  });
});
