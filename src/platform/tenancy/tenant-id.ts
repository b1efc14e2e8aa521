import { z } from 'zod';

/**
 * A tenant id as the platform takes one: the `tenant_id` claim of a token (jwt.ts), the tenant of a
 * revocation message (token-revocations.ts), the `--tenant` of `npm run token` and its revocation
 * commands. zod's UUID: 8-4-4-4-12 hex digits with a version digit 1-8 and a variant digit 8, 9, a or b
 * (or the nil and max UUIDs), any case. The commands check with this very schema: a looser pattern of
 * their own signed tokens the API refuses (401) at every use, and stored revocations for a tenant that
 * can never sign in, whose Redis message every API process discarded.
 */
export const tenantIdSchema = z.string().uuid();

export const isTenantId = (value: unknown): value is string => tenantIdSchema.safeParse(value).success;

/** What a command prints for a --tenant the schema refuses. */
export const TENANT_ID_PROBLEM = 'is not a tenant id the API accepts (a UUID: version digit 1-8, variant digit 8, 9, a or b)';
