/**
 * The tenant role that administers the tenant: its configuration (the approval policy) and any of its
 * users' runs (cancel, retry: src/platform/durable/run-routes.ts). A tenant role, unlike the operators'
 * `platform-operator` (admin-auth.middleware.ts), which spans tenants.
 */
export const ADMIN_ROLE = 'admin';
