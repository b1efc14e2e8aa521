import { describe, expect, it } from 'vitest';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { createLogger } from '../../src/platform/telemetry/logger.ts';
import { httpLogger } from '../../src/platform/telemetry/http-logger.ts';
import { correlationMiddleware } from '../../src/platform/http/correlation.ts';
import { waitFor } from '../helpers/poll.ts';
import { capturedLog } from '../helpers/log-capture.ts';

describe('request log lines', () => {
  it('carry the correlation id and status, and never the bearer token, cookies or a ?token= value', async () => {
    const { lines, destination } = capturedLog();
    const app = express();
    app.use(correlationMiddleware);
    app.use(httpLogger(createLogger({ level: 'info', name: 'test', destination })));
    app.get('/admin/queues', (_req, res) => void res.status(303).end());
    const server = await new Promise<import('node:http').Server>((r) => {
      const s = app.listen(0, '127.0.0.1', () => r(s));
    });
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/admin/queues?token=eyJ.secret.sig`;
      await fetch(url, { redirect: 'manual', headers: { authorization: 'Bearer eyJ.header.sig', cookie: 'dealix_admin_token=eyJ.cookie.sig', 'x-correlation-id': 'log-1' } });
      const line = await waitFor(() => lines.find((l) => l.correlation_id === 'log-1'), { what: 'the request line' });
      expect(JSON.stringify(line)).not.toMatch(/eyJ\.(secret|header|cookie)/);
      expect(line.req).toMatchObject({ method: 'GET', url: '/admin/queues?token=[redacted]', headers: { authorization: '[redacted]', cookie: '[redacted]' } });
      expect(line.res.statusCode).toBe(303);
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
});
