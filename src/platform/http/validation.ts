import type { ZodType } from 'zod';
import { ValidationError } from '../errors/app-error.ts';

/** Parses with zod; a failure becomes a 400 (or the given status) naming each bad field. */
export function parseOrThrow<T>(schema: ZodType<T>, value: unknown, what: string, status = 400): T {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const errors = result.error.issues.slice(0, 50).map((i) => ({ path: i.path.join('.') || '(root)', message: i.message }));
  throw new ValidationError(`Invalid ${what}`, errors, status);
}
