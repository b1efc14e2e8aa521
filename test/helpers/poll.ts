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

/**
 * `promise`, or a rejection naming `what` once `timeoutMs` has passed without it settling: a promise
 * no poll can stand in for (a step at a barrier, a process's exit, a socket's close) awaited with a
 * deadline, so a test whose premise failed (the run went elsewhere, the process did not stop) fails
 * with that message — and its `finally` stops what it started — instead of hanging to the test's
 * timeout, its host or process still running into the file's next tests.
 */
export async function within<T>(promise: Promise<T>, what: string, timeoutMs = 30_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * What `promise` fails with, or undefined if it succeeds, awaited with a deadline (within): for a
 * test that expects a wait to end in an error (a bound of a few seconds) rather than last for ever.
 */
export function failureWithin(promise: Promise<unknown>, what: string, timeoutMs: number): Promise<unknown> {
  return within(
    promise.then(
      () => undefined,
      (e: unknown) => e,
    ),
    what,
    timeoutMs,
  );
}
