import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { untraceIncomingOnPort } from './otel-hooks.ts';

/**
 * A tiny Prometheus endpoint for processes without an HTTP API (workers): GET /metrics serves the
 * registry (step duration histogram, process metrics). Off unless WORKER_METRICS_PORT is set.
 */
export async function startMetricsServer(registry: Registry, port: number, logger: Logger): Promise<Server> {
  const server = createServer((req, res) => {
    if (req.method !== 'GET' || (req.url !== '/metrics' && !req.url?.startsWith('/metrics?'))) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    registry
      .metrics()
      .then((text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text))
      .catch(() => res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics unavailable\n'));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, () => resolve());
  });
  const { port: bound } = server.address() as AddressInfo;
  // No request here starts a trace: before, every path but /metrics did (a port scan filled the collector with root spans).
  untraceIncomingOnPort(bound);
  logger.info({ metrics_port: bound }, 'worker metrics listening');
  return server;
}
