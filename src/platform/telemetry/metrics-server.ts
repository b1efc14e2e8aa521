import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { untraceIncomingOnPort } from './otel-hooks.ts';

/**
 * A tiny Prometheus endpoint for processes without an HTTP API (workers): GET /metrics serves the
 * registry (step duration histogram, process metrics). Off unless WORKER_METRICS_PORT is set; on
 * WORKER_METRICS_HOST's address, or every interface when it is unset (`host` undefined), as a Prometheus
 * on another machine or pod scrapes it. HEAD as GET without a body, OPTIONS 204 and another method 405,
 * with `Allow: GET, HEAD`; another path 404.
 */
const METRICS_ALLOW = 'GET, HEAD';

export async function startMetricsServer(registry: Registry, port: number, logger: Logger, host?: string): Promise<Server> {
  const server = createServer((req, res) => {
    if (req.url !== '/metrics' && !req.url?.startsWith('/metrics?')) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    // As the API's operational endpoints (docs/api.md): GET and HEAD, OPTIONS 204, another method 405, each with `Allow`.
    if (req.method === 'OPTIONS') {
      res.writeHead(204, { allow: METRICS_ALLOW }).end();
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: METRICS_ALLOW, 'content-type': 'text/plain' }).end(`method not allowed: /metrics answers ${METRICS_ALLOW}\n`);
      return;
    }
    registry
      .metrics()
      // Node's http sends no body for HEAD, whatever end() is given; the headers are GET's.
      .then((text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text))
      .catch(() => res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics unavailable\n'));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port, ...(host ? { host } : {}) }, () => resolve());
  });
  const { port: bound, address } = server.address() as AddressInfo;
  // No request here starts a trace: before, every path but /metrics did (a port scan filled the collector with root spans).
  untraceIncomingOnPort(bound);
  logger.info({ metrics_port: bound, metrics_address: address }, 'worker metrics listening');
  return server;
}
