import { z, type ZodType } from 'zod';
import { ValidationError } from '../errors/app-error.ts';

/** Parses with zod; a failure becomes a 400 (or the given status) naming each bad field. */
export function parseOrThrow<T>(schema: ZodType<T>, value: unknown, what: string, status = 400): T {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const errors = result.error.issues.slice(0, 50).map((i) => ({ path: i.path.join('.') || '(root)', message: i.message }));
  throw new ValidationError(`Invalid ${what}`, errors, status);
}

/**
 * Path parameters as the route's schema validated them, each declared a UUID in lower case: a UUID is
 * case-insensitive (RFC 9562; PostgreSQL's uuid reads either), so `/runs/ABC…` and `/runs/abc…` are
 * one resource, and what the handler and the idempotency fingerprint see is one value for it.
 */
export function canonicalParams<T>(schema: ZodType<T>, params: T): T {
  if (!(schema instanceof z.ZodObject) || typeof params !== 'object' || params === null) return params;
  const out: Record<string, unknown> = { ...(params as Record<string, unknown>) };
  for (const [name, field] of Object.entries(schema.shape as Record<string, unknown>)) {
    if ((field as { format?: unknown }).format === 'uuid' && typeof out[name] === 'string') out[name] = (out[name] as string).toLowerCase();
  }
  return out as T;
}
