/** Small helpers of the demo (npm run demo): its error type, output and polling with a deadline. */

/** A failure the demo explains in one sentence (no stack trace): what failed and what to do. */
export class DemoError extends Error {}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
export const say = (line = '') => console.log(line);
export const fmt = (n: number) => n.toLocaleString('en-US', { maximumFractionDigits: 2 });
/** A URL without its password, fit to print. */
export const safeUrl = (url: string) => url.replace(/\/\/([^:@/]+):[^@/]*@/, '//$1@');

/**
 * Polls `fn` until it returns a value, or fails naming `what` after `timeoutMs`. `guard` runs before
 * every attempt and throws to stop early (e.g. a child process exited).
 */
export async function until<T>(what: string, timeoutMs: number, fn: () => Promise<T | undefined>, guard: () => void = () => {}): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    try {
      guard();
    } catch (e) {
      throw new DemoError(`${(e as Error).message} while waiting for ${what}`);
    }
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (e) {
      if (e instanceof DemoError) throw e;
      last = (e as Error).message;
    }
    if (Date.now() > deadline) throw new DemoError(`timed out after ${Math.round(timeoutMs / 1000)} s waiting for ${what}${last ? ` (last error: ${last})` : ''}`);
    await sleep(200);
  }
}
