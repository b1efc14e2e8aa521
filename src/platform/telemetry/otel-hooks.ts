/** The OTel SDK (started by register.ts via --import) registers its shutdown here, so close sequences can flush it. */
let shutdown: (() => Promise<void>) | undefined;

export function setTelemetryShutdown(fn: () => Promise<void>): void {
  shutdown = fn;
}

export async function shutdownTelemetry(): Promise<void> {
  if (!shutdown) return;
  try {
    await Promise.race([shutdown(), new Promise((r) => setTimeout(r, 3000))]);
  } catch {
    // telemetry must never block or fail a shutdown
  }
}
