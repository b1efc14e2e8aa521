/**
 * A failed assertion (vitest's `expect` and node:assert both throw an Error named AssertionError):
 * it says the polled state is wrong, not that it is not there yet, so waitFor rethrows it at once.
 */
function isAssertion(e: unknown): boolean {
  return e instanceof Error && e.name === 'AssertionError';
}

/**
 * Polls `fn` until it returns a truthy value or the deadline passes; no fixed sleeps in tests. Other
 * errors count as "not yet" (a service still starting), and the last one is named on a timeout; an
 * assertion that fails inside `fn` fails the wait at once.
 */
export async function waitFor<T>(fn: () => Promise<T | undefined | null | false> | T | undefined | null | false, opts: { timeoutMs?: number; intervalMs?: number; what?: string } = {}): Promise<T> {
  const deadline = Date.now() + (opts.timeoutMs ?? 20_000);
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v as T;
    } catch (e) {
      if (isAssertion(e)) throw e;
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${opts.what ?? 'condition'}${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 50));
  }
}
