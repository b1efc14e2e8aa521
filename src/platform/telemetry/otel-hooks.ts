/**
 * The OTel SDK (started by register.ts via --import) registers its shutdown here, so close sequences can
 * flush it, and so the application knows whether tracing is live (BullMQ telemetry is only wired then:
 * with the SDK off, queues and workers run exactly as without telemetry).
 */
let shutdown: (() => Promise<void>) | undefined;

export function setTelemetryShutdown(fn: () => Promise<void>): void {
  shutdown = fn;
}

/** Local ports whose incoming requests are never traced: a worker's metrics endpoint (metrics-server.ts). */
const untracedPorts = new Set<number>();

/** Incoming requests on this local port start no span (register.ts's ignoreIncomingRequestHook asks). */
export function untraceIncomingOnPort(port: number): void {
  untracedPorts.add(port);
}

export function untracedIncoming(localPort: number | undefined): boolean {
  return localPort !== undefined && untracedPorts.has(localPort);
}

/** True when register.ts started the SDK in this process. */
export function telemetryStarted(): boolean {
  return shutdown !== undefined;
}

/** Flushes buffered spans and stops the SDK; bounded, and never throws (a dead collector must not block an exit). */
export async function shutdownTelemetry(timeoutMs = 3000): Promise<void> {
  if (!shutdown) return;
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([shutdown(), new Promise((r) => (timer = setTimeout(r, timeoutMs)))]);
  } catch {
    // telemetry must never block or fail a shutdown
  } finally {
    clearTimeout(timer);
  }
}
