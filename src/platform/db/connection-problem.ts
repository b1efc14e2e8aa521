import { describePgUrl } from '../config/config.ts';
import { isUnreachable } from './connection-bounds.ts';

/**
 * A failure to reach or enter PostgreSQL as one sentence that names the setting to fix, for the command-line
 * tools (`npm run db:*`, `npm run demo`): a stack trace of pg-pool and kysely frames tells a new user or a
 * deploy's release phase nothing. Undefined for any other error (a failed statement): the caller shows it whole.
 */
export function databaseProblem(e: unknown, setting: string, url: string): string | undefined {
  const err = e as { code?: unknown; message?: unknown };
  const code = typeof err?.code === 'string' ? err.code : '';
  const message = typeof err?.message === 'string' ? err.message : String(e);
  const { host, port, user, database } = describePgUrl(url);
  if (isUnreachable(e)) {
    return `PostgreSQL is not reachable at ${host}:${port} (${message}). Start it, or point ${setting} at it.`;
  }
  if (code === '28P01' || code === '28000') {
    const fix = setting === 'DATABASE_ADMIN_URL' ? 'it must name a superuser' : 'in development `npm run db:setup` creates the roles';
    return `PostgreSQL refused the login of role ${user} at ${host}:${port} (${message}). Check ${setting}: ${fix}.`;
  }
  // Refused a privilege through the superuser URL (a role with CREATEROLE but not CREATEDB, a managed service's
  // admin): db:setup's CREATE ROLE / CREATE DATABASE. Not a missing database, though the message says "create database".
  if (code === '42501' && setting === 'DATABASE_ADMIN_URL') {
    return `role ${user} at ${host}:${port} lacks a privilege db:setup needs (${message}). Check DATABASE_ADMIN_URL: it must name a superuser.`;
  }
  // 3D000: the database is missing. MikroORM's migrator first tries to create a missing database itself, which the owner role may not (42501).
  if (code === '3D000' || (code === '42501' && /create database/i.test(message))) {
    return `the database ${database} (${setting}) does not exist at ${host}:${port}. In development \`npm run db:setup\` creates it; in production create it first (docs/runbook.md, "Migrate (outside a deploy)").`;
  }
  return undefined;
}
