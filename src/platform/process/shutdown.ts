import type { Logger } from 'pino';
import { shutdownTelemetry } from '../telemetry/otel-hooks.ts';

/**
 * SIGTERM/SIGINT: run the close sequence once, within `graceMs` plus a margin, flush telemetry, exit 0.
 * A second signal exits at once.
 */
export function onShutdown(logger: Logger, graceMs: number, close: () => Promise<void>): void {
  let closing = false;
  const handler = (signal: string) => {
    if (closing) process.exit(1);
    closing = true;
    logger.info({ signal }, 'shutting down');
    const hard = setTimeout(() => {
      logger.error('shutdown took too long; exiting');
      process.exit(1);
    }, graceMs + 10_000);
    hard.unref();
    close()
      .then(() => shutdownTelemetry())
      .then(() => {
        logger.info('shut down cleanly');
        logger.flush?.();
        process.exit(0);
      })
      .catch((err) => {
        logger.error({ err }, 'shutdown failed');
        process.exit(1);
      });
  };
  process.once('SIGTERM', () => handler('SIGTERM'));
  process.once('SIGINT', () => handler('SIGINT'));
}
