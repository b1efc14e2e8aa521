import type { Logger } from 'pino';

/** A queue's `queue error` warning at most once per this long (its connection retries several times a second while Redis is down). */
export const QUEUE_ERROR_LOG_EVERY_MS = 10_000;

/**
 * At most one call of `log` per `everyMs`: the first at once, the ones within `everyMs` of the last
 * logged one suppressed and counted, the count handed to the next one logged (0 when none was).
 * `reset()` (the connection is back) has the next one logged at once, whenever the last was.
 */
export function throttle(everyMs: number, now: () => number = Date.now): ((log: (suppressed: number) => void) => void) & { reset(): void } {
  let lastAt: number | undefined;
  let suppressed = 0;
  const warn = (log: (suppressed: number) => void) => {
    const t = now();
    if (lastAt !== undefined && t - lastAt < everyMs) {
      suppressed++;
      return;
    }
    lastAt = t;
    const count = suppressed;
    suppressed = 0;
    log(count);
  };
  return Object.assign(warn, { reset: () => void (lastAt = undefined) });
}

/** What warnOnQueueErrors needs of a BullMQ queue: its errors, and its backend's `ready` (its Redis connection (re)connected). */
export interface ErrorSource {
  on(event: 'error', fn: (err: Error) => void): unknown;
  getBackend?(): { on(event: 'ready', fn: () => void): unknown };
}

/**
 * Logs a queue's errors as `queue error` warnings, at most one per QUEUE_ERROR_LOG_EVERY_MS per queue:
 * an API with Redis unreachable logged about four a second per queue. A warning after suppressed ones
 * says how many in `suppressed` (errors not logged since the one before). Each time the queue's Redis
 * connection is ready again the throttle starts afresh: the first error after a recovery (Redis down
 * again) is logged at once, never suppressed because one of the outage before was logged < 10 s ago.
 */
export function warnOnQueueErrors(queue: ErrorSource, name: string, logger: Pick<Logger, 'warn'>, everyMs = QUEUE_ERROR_LOG_EVERY_MS): void {
  const warn = throttle(everyMs);
  queue.on('error', (err) => warn((suppressed) => logger.warn({ err, queue: name, ...(suppressed ? { suppressed } : {}) }, 'queue error')));
  queue.getBackend?.().on('ready', () => warn.reset());
}
