import { defineEntity, p } from '@mikro-orm/core';
import { SYSTEM_ROLE, tenantIdProperty, tenantIsolationPolicy } from '../db/tenant-owned.ts';

/**
 * A revocation of tenant tokens before their `exp` (ADR 0018), written by an operator
 * (`npm run token -- revoke`, as the owner role) and nothing else: the application role only reads it,
 * and every API process holds the whole table in memory (token-revocations.ts). Two kinds, exactly one
 * per row: a token id (`jti`) of the tenant, or a not-before (`not_before`) that refuses every token of
 * the tenant — or of its subject `subject` alone — issued before it (`iat` < `not_before`). A lifted row
 * (`lifted_at`, by the operator's `lift`) is out of force and kept.
 */
export const TokenRevocationRow = defineEntity({
  name: 'TokenRevocation',
  tableName: 'token_revocations',
  properties: {
    tenantId: tenantIdProperty().primary(),
    id: p.uuid().primary(),
    /** The revoked token's id; null for a not-before. */
    jti: p.string().length(255).nullable(),
    /** With a not-before: only this subject's tokens; null: every subject of the tenant. */
    subject: p.string().length(255).nullable(),
    /** Tokens issued (`iat`) before this are refused; null for a token id. */
    notBefore: p.datetime().nullable(),
    /** When the row stops mattering (the revoked token's exp): prunable after it; null: kept. */
    expiresAt: p.datetime().nullable(),
    /** Who revoked (the operator's name as given to the command). */
    revokedBy: p.string().length(255),
    reason: p.string().length(500).nullable(),
    createdAt: p.datetime(),
    /** Lifted by an operator (`npm run token -- lift`): no longer in force, kept as the record of both acts. */
    liftedAt: p.datetime().nullable(),
    liftedBy: p.string().length(255).nullable(),
  },
  checks: [
    { name: 'token_revocations_one_kind', expression: '(jti is null) <> (not_before is null)' },
    { name: 'token_revocations_subject_with_not_before', expression: 'subject is null or not_before is not null' },
    { name: 'token_revocations_lifted_by_whom', expression: '(lifted_at is null) = (lifted_by is null)' },
    // An empty token id or subject revokes no token (the verifier drops an empty jti; sub is required
    // non-empty) while the command would report success: refused. A lifted row is exempt, so a row
    // written before this check is kept as the record, lifted by the migration that added it.
    { name: 'token_revocations_jti_not_empty', expression: "jti <> '' or lifted_at is not null" },
    { name: 'token_revocations_subject_not_empty', expression: "subject <> '' or lifted_at is not null" },
  ],
  rowLevelSecurity: 'force',
  policies: [
    tenantIsolationPolicy('token_revocations'),
    // Every API process loads every tenant's revocations, as the NOLOGIN system role (its column grants).
    { name: 'token_revocations_system_read', command: 'select', roles: [SYSTEM_ROLE], using: 'true' },
    // Pruning (`npm run token -- prune-revocations`, as the owner, a member of the system role): only rows
    // past their expiry, and not-before rows older than the token age the prune declares in
    // app.token_max_age (JWT_MAX_TOKEN_LIFETIME plus the tolerance; unset: none). The system role is
    // granted no DELETE, so the application cannot remove any row.
    {
      name: 'token_revocations_system_prune',
      command: 'delete',
      roles: [SYSTEM_ROLE],
      using: "expires_at < now() or not_before < now() - nullif(current_setting('app.token_max_age', true), '')::interval",
    },
  ],
});
