/** Connection settings of the local services the tests use (overridable for other machines). */
export const TEST_ADMIN_URL = process.env.TEST_DATABASE_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
export const TEST_REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
export const TEST_OWNER = { user: 'dealix_owner', password: 'dealix_owner' };
export const TEST_APP = { user: 'dealix_app', password: 'dealix_app' };
/** Per test run (set by global-setup before the workers fork), so concurrent runs on one server never share a template. */
export const TEST_TEMPLATE_DB = process.env.DEALIX_TEST_TEMPLATE_DB ?? 'dealix_test_template';
export const TEST_JWT_SECRET = 'test-secret-test-secret-test-secret-0001';

export function pgUrl(role: { user: string; password: string }, database: string): string {
  const u = new URL(TEST_ADMIN_URL);
  u.username = role.user;
  u.password = role.password;
  u.pathname = `/${database}`;
  return u.toString();
}
