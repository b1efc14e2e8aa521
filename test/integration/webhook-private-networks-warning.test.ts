/**
 * WEBHOOK_ALLOW_PRIVATE_NETWORKS=true turns the webhook SSRF guard off: the real API (src/server.ts)
 * and the real worker (workers/golden-path.worker.ts), spawned as processes, say so at start with one
 * warning line (security_event `webhook_private_networks_allowed`), as the API does for a published
 * JWT secret; without it they do not. The readiness row `webhook-ssrf-guard`: readiness.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jsonLines, spawnApi } from '../helpers/api-process.ts';
import { startStack, type TestStack } from '../helpers/stack.ts';

const EVENT = 'webhook_private_networks_allowed';

describe('WEBHOOK_ALLOW_PRIVATE_NETWORKS=true at start', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({ api: false });
  }, 120_000);
  afterAll(async () => {
    await stack?.stop();
  });

  it('the API and the worker each log one warning when it is true, none when it is false', { timeout: 180_000 }, async () => {
    const open = await spawnApi({ ...stack.env, WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true' });
    const guarded = await spawnApi({ ...stack.env, WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'false' });
    try {
      const warned = open.lines().filter((l) => l.security_event === EVENT);
      expect(warned).toHaveLength(1);
      expect(warned[0]).toMatchObject({ level: 40, msg: expect.stringMatching(/SSRF guard is off/) });
      expect(guarded.lines().filter((l) => l.security_event === EVENT)).toEqual([]);
    } finally {
      await Promise.all([open.stop('SIGKILL'), guarded.stop('SIGKILL')]);
    }
    const worker = await stack.spawnWorker({ WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true' });
    const plain = await stack.spawnWorker({ WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'false' });
    const workerWarned = jsonLines(worker.output()).filter((l) => l.security_event === EVENT);
    expect(workerWarned).toHaveLength(1);
    expect(workerWarned[0]).toMatchObject({ level: 40, msg: expect.stringMatching(/SSRF guard is off/) });
    expect(jsonLines(plain.output()).filter((l) => l.security_event === EVENT)).toEqual([]);
  });
});
