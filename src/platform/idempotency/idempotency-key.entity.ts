import { defineEntity, p, type InferEntity } from '@mikro-orm/core';
import { SYSTEM_ROLE, tenantIdProperty, tenantIsolationPolicy } from '../db/tenant-owned.ts';

export const IDEMPOTENCY_STATUSES = ['in_progress', 'completed'] as const;

/** One stored outcome per (tenant, principal, key): the record behind the Idempotency-Key standard. */
export const IdempotencyKey = defineEntity({
  name: 'IdempotencyKey',
  tableName: 'idempotency_keys',
  properties: {
    id: p.uuid().primary(),
    tenantId: tenantIdProperty(),
    principal: p.string().length(255),
    idempotencyKey: p.string().length(255),
    method: p.string().length(10),
    route: p.string().length(255),
    fingerprint: p.string().length(64),
    status: p.enum(IDEMPOTENCY_STATUSES),
    responseStatus: p.integer().nullable(),
    responseBody: p.json<unknown>().nullable(),
    responseHeaders: p.json<Record<string, string>>().nullable(),
    lockedAt: p.datetime().nullable(),
    createdAt: p.datetime(),
    expiresAt: p.datetime().index(),
  },
  uniques: [{ name: 'idempotency_keys_tenant_principal_key_unique', properties: ['tenantId', 'principal', 'idempotencyKey'] }],
  rowLevelSecurity: 'force',
  policies: [
    tenantIsolationPolicy('idempotency_keys'),
    // The maintenance job deletes expired keys of every tenant, and nothing else. See ADR 0003.
    { name: 'idempotency_keys_system_select_expired', command: 'select', roles: [SYSTEM_ROLE], using: '(expires_at < now())' },
    { name: 'idempotency_keys_system_delete_expired', command: 'delete', roles: [SYSTEM_ROLE], using: '(expires_at < now())' },
  ],
});
export type IIdempotencyKey = InferEntity<typeof IdempotencyKey>;
