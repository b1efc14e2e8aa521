import type { Server, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { shutdownTelemetry } from '../telemetry/otel-hooks.ts';
import { releaseEarlySignals } from './early-signals.ts';

/**
 * SIGTERM/SIGINT: run the close sequence once, within `graceMs` plus a margin, flush telemetry, exit 0.
 * A second signal exits at once, with status 1 and a line that says so. The listeners stay for every
 * signal (`on`, not `once`): with `once` the second SIGTERM found none and Node's default action
 * killed the process by the signal, silently. Installing them removes the start-up handlers
 * (early-signals.ts), which until then end the start at once.
 */
export function onShutdown(logger: Logger, graceMs: number, close: () => Promise<void>): void {
  let closing = false;
  const handler = (signal: string) => {
    if (failedStartExiting) {
      // The start failed and the process is already on its way to exit 1 (exitAfterFailedStart). The
      // graceful stop beside it closed again and exited 0 after `shut down cleanly`: a supervisor
      // stopping it meanwhile saw the failure as a clean stop. It was stopping anyway: at once, with 1.
      logger.warn({ signal }, 'signal while closing after the failed start: exiting at once');
      exitAfterFlush(logger, 1);
      return;
    }
    if (closing) {
      // What the close had not finished is carried on elsewhere: a worker's jobs once their locks lapse.
      logger.error({ signal }, 'second signal while shutting down: exiting at once, without finishing the shutdown');
      exitAfterFlush(logger, 1);
      return;
    }
    closing = true;
    logger.info({ signal }, 'shutting down');
    const hard = setTimeout(() => {
      logger.error('shutdown took too long; exiting');
      exitAfterFlush(logger, 1);
    }, graceMs + 10_000);
    hard.unref();
    close()
      .then(() => shutdownTelemetry())
      .then(() => {
        logger.info('shut down cleanly');
        exitAfterFlush(logger, 0);
      })
      .catch((err) => {
        logger.error({ err }, 'shutdown failed');
        exitAfterFlush(logger, 1);
      });
  };
  process.on('SIGTERM', () => handler('SIGTERM'));
  process.on('SIGINT', () => handler('SIGINT'));
  // From here on these handle every signal: the start-up ones (which end a start at once) go.
  releaseEarlySignals();
}

/** How long a failed start waits for what it opened to close before it exits anyway. */
export const FAILED_START_CLOSE_MS = 5_000;

/** Set once a failed start is exiting: a signal then exits at once with 1 (onShutdown), never with 0. */
let failedStartExiting = false;

/**
 * After a failed start (`api could not start`, `worker could not start`): closes what the start
 * opened, then exits 1 once the log is flushed — after `closeMs` at most. The close was awaited with
 * no deadline: one that never settles (a connection whose peer stopped answering) kept the failed
 * process alive, doing nothing, instead of exiting 1 for its supervisor to restart or report. The
 * timer is not unref'd on purpose: with the close's promise pending and nothing else holding the event
 * loop, an unref'd one would let the process end with status 0. Once closed, the telemetry is flushed
 * as at any stop (the failed start's spans), within the same deadline.
 */
export function exitAfterFailedStart(logger: Logger, close: () => Promise<void>, closeMs = FAILED_START_CLOSE_MS): void {
  failedStartExiting = true;
  const deadline = setTimeout(() => {
    logger.error({ close_ms: closeMs }, 'closing after the failed start took too long; exiting without waiting for it');
    exitAfterFlush(logger, 1);
  }, closeMs);
  void close()
    .catch((err: unknown) => logger.warn({ err }, 'closing after the failed start failed'))
    .then(() => shutdownTelemetry())
    .finally(() => {
      clearTimeout(deadline);
      exitAfterFlush(logger, 1);
    });
}

/** How long an exit waits for the log's buffered lines to be written (a stdout nobody reads must not hold it). */
const FLUSH_BEFORE_EXIT_MS = 1_000;

/**
 * Exits with `code` once the log's buffered lines are written. The logger's destination is
 * asynchronous (logger.ts): a `flush()` without a callback only starts the write, and an exit right
 * after it could lose the process's last lines — 'shut down cleanly' among them (seen in CI).
 */
function exitAfterFlush(logger: Logger, code: number): void {
  const exit = () => process.exit(code);
  setTimeout(exit, FLUSH_BEFORE_EXIT_MS);
  if (typeof logger.flush !== 'function') return exit();
  try {
    logger.flush(() => exit());
  } catch {
    exit();
  }
}

/**
 * The API's first move at SIGTERM: marks the process stopping (/readyz answers 503 from then on) and,
 * for `delayMs` (API_SHUTDOWN_DELAY), goes on serving — new connections too — so a load balancer that
 * routes by readiness (Kubernetes, an ALB) stops sending requests before the listener closes; requests
 * sent between the signal and the deregistration were refused a connection. Then the caller drains.
 * 0 changes nothing but the flag: the drain starts at once. A second signal meanwhile exits at once (onShutdown).
 */
export async function notReadyFor(markStopping: () => void, delayMs: number, logger: Logger): Promise<void> {
  markStopping();
  if (delayMs <= 0) return;
  logger.info({ delay_ms: delayMs }, 'not ready (/readyz 503), still serving until the delay ends (API_SHUTDOWN_DELAY)');
  await new Promise((resolve) => setTimeout(resolve, delayMs));
}

/**
 * Returns the graceful close of `server` (call this before it serves): the listener closes (new
 * connections are refused), idle keep-alive connections are closed, and each request in flight is
 * answered and then its connection closed (`Connection: close`). Node's `server.close()` alone
 * leaves a keep-alive connection that was busy at the signal open after its answer, for
 * `keepAliveTimeout` (65 s): close() would wait past the hard deadline, and the client could keep
 * sending requests on it meanwhile. Connections still open `graceMs` after the close (a client still
 * sending its request, which API_REQUEST_TIMEOUT would allow past the hard deadline) are cut off, so
 * the process closes the rest and exits 0. (A handler still waiting on the database holds its pool
 * connection: the pool's close waits for it, up to the hard deadline.)
 */
export function drainOnClose(server: Server, graceMs: number): () => Promise<void> {
  const inFlight = new Set<ServerResponse>();
  let closing = false;
  // A response whose headers are already out (a file being streamed at the signal) keeps its
  // connection: JSON answers are written whole, so this is the rare case, bounded by the hard deadline.
  const closeAfter = (res: ServerResponse) => {
    if (!res.headersSent) res.shouldKeepAlive = false;
  };
  server.prependListener('request', (_req, res) => {
    if (closing) return closeAfter(res);
    inFlight.add(res);
    res.once('close', () => inFlight.delete(res));
  });
  return async () => {
    closing = true;
    for (const res of inFlight) closeAfter(res);
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    const cutOff = setTimeout(() => server.closeAllConnections(), graceMs);
    await closed;
    clearTimeout(cutOff);
  };
}
