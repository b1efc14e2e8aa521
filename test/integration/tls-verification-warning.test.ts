/**
 * NODE_TLS_REJECT_UNAUTHORIZED=0 turns TLS certificate verification off for the whole process. In production
 * the real API (src/server.ts) and the real worker (workers/golden-path.worker.ts), spawned as processes,
 * say so at start with one warning line (security_event `tls_verification_off`) and still start; with any
 * other value they do not. The readiness row `tls-verification`: readiness.test.ts; the rule: tls-verification.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { jsonLines, spawnApi } from '../helpers/api-process.ts';
import { stackForTests } from '../helpers/stack-for-tests.ts';

const EVENT = 'tls_verification_off';
// Production needs an https JWKS (it wins over JWT_SECRET); never fetched here: no token is sent.
const PRODUCTION = { NODE_ENV: 'production', JWT_JWKS_URL: 'https://127.0.0.1:1/jwks.json' };

describe('NODE_TLS_REJECT_UNAUTHORIZED=0 at start in production', () => {
  const suite = stackForTests({ stack: { api: false } });

  it('the API and the worker each log one warning when it is 0, none when it is 1', { timeout: 180_000 }, async () => {
    const off = await spawnApi({ ...suite.stack.env, ...PRODUCTION, NODE_TLS_REJECT_UNAUTHORIZED: '0' });
    const on = await spawnApi({ ...suite.stack.env, ...PRODUCTION, NODE_TLS_REJECT_UNAUTHORIZED: '1' });
    try {
      const warned = off.lines().filter((l) => l.security_event === EVENT);
      expect(warned).toHaveLength(1);
      expect(warned[0]).toMatchObject({ level: 40, msg: expect.stringMatching(/NODE_TLS_REJECT_UNAUTHORIZED=0: TLS certificates are not verified.*NODE_EXTRA_CA_CERTS/) });
      expect(on.lines().filter((l) => l.security_event === EVENT)).toEqual([]);
    } finally {
      await Promise.all([off.stop('SIGKILL'), on.stop('SIGKILL')]);
    }
    const worker = await suite.stack.spawnWorker({ ...PRODUCTION, NODE_TLS_REJECT_UNAUTHORIZED: '0' });
    const verifying = await suite.stack.spawnWorker({ ...PRODUCTION, NODE_TLS_REJECT_UNAUTHORIZED: '1' });
    const workerWarned = jsonLines(worker.output()).filter((l) => l.security_event === EVENT);
    expect(workerWarned).toHaveLength(1);
    expect(workerWarned[0]).toMatchObject({ level: 40, msg: expect.stringMatching(/TLS certificates are not verified/) });
    expect(jsonLines(verifying.output()).filter((l) => l.security_event === EVENT)).toEqual([]);
  });
});
