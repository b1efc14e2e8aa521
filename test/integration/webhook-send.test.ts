/**
 * One webhook delivery attempt against a real node:http receiver on 127.0.0.1 (postWebhook): the
 * Standard Webhooks signature, the SSRF guard at delivery time (the address the connection would use,
 * after DNS resolution), no redirect followed, and the attempt's timeout.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Webhook } from 'standardwebhooks';
import { postWebhook } from '../../src/platform/webhooks/send.ts';
import { HostResolver } from '../../src/platform/webhooks/resolve.ts';
import { waitFor } from '../helpers/poll.ts';
import { newSigningSecret } from '../../src/platform/webhooks/webhook-endpoints.routes.ts';

const hits: { path: string; headers: IncomingHttpHeaders; body: string }[] = [];
let server: Server;
let port: number;
/** What the /flood receiver wrote before its connection was closed. */
const flooded = { bytes: 0, closed: false };

beforeAll(async () => {
  server = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      hits.push({ path: req.url ?? '', headers: req.headers, body });
      if (req.url === '/redirect') return void res.writeHead(302, { location: '/elsewhere' }).end();
      if (req.url === '/silent') return; // never answers
      // Switches protocols (as a WebSocket server, or a hostile receiver, may): 101, then the connection held open, nothing more.
      if (req.url === '/switch') return void req.socket.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
      // Answers 200 and streams its body as fast as the connection takes it, for ever (a hostile or broken receiver).
      if (req.url === '/flood') {
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        const chunk = Buffer.alloc(64 * 1024, 0x61);
        const pump = () => {
          while (!res.destroyed && res.write(chunk)) flooded.bytes += chunk.length;
          if (!res.destroyed) res.once('drain', pump);
        };
        res.once('close', () => (flooded.closed = true));
        return pump();
      }
      // Answers 200 at once, then never ends its body (a framework that streams, a proxy that holds it).
      if (req.url === '/unending') return void res.writeHead(200, { 'content-type': 'text/plain' }).flushHeaders();
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  port = (server.address() as AddressInfo).port;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
});

const secret = newSigningSecret();
// The system's name servers; `localhost` is answered from the hosts file.
const resolver = new HostResolver({ servers: [], timeoutMs: 5000 });
const body = JSON.stringify({ type: 'run.completed', timestamp: new Date().toISOString(), data: { run_id: 'r-1' } });
const send = (url: string, allowPrivate: boolean, timeoutMs = 5000) => postWebhook({ url, secrets: [secret], msgId: `msg-${hits.length}`, body, timeoutMs, policy: { allowPrivate, httpsOnly: false }, resolver });

describe('a delivery attempt', () => {
  it('POSTs the body signed per Standard Webhooks: the library verifies it with the secret', async () => {
    const out = await send(`http://127.0.0.1:${port}/ok`, true);
    expect(out).toMatchObject({ ok: true, statusCode: 204, error: null });
    const hit = hits.find((h) => h.path === '/ok')!;
    expect(new Webhook(secret).verify(hit.body, hit.headers as Record<string, string>)).toEqual(JSON.parse(body));
    expect(() => new Webhook(newSigningSecret()).verify(hit.body, hit.headers as Record<string, string>)).toThrow();
  });

  it('refuses, at connection time, a host name that resolves to loopback (DNS rebinding) and an address literal, without the flag: nothing reaches the receiver', async () => {
    const before = hits.length;
    const byName = await send(`http://localhost:${port}/rebound`, false);
    expect(byName.ok).toBe(false);
    expect(byName.error).toMatch(/refused: localhost does not resolve to a public address/);
    // The tenant reads last_error: what an internal name resolves to is never told (no map of the network).
    expect(byName.error).not.toMatch(/127\.0\.0\.1|::1|loopback/);
    const byAddress = await send(`http://127.0.0.1:${port}/literal`, false);
    expect(byAddress.ok).toBe(false);
    expect(byAddress.error).toMatch(/refused: .*loopback/);
    expect(hits.length).toBe(before);
  });

  it('follows no redirect: a 302 is a failed attempt and its target is never requested', async () => {
    const out = await send(`http://127.0.0.1:${port}/redirect`, true);
    expect(out).toMatchObject({ ok: false, statusCode: 302, error: 'HTTP 302' });
    expect(hits.some((h) => h.path === '/elsewhere')).toBe(false);
  });

  it('a 2xx that arrived within the timeout is delivered even if its body never ends: the status is the answer, the body is not waited for', async () => {
    const out = await send(`http://127.0.0.1:${port}/unending`, true, 1000);
    expect(out).toMatchObject({ ok: true, statusCode: 200, error: null });
  });

  it("reads at most 64 KiB of an answer that never ends: a 2xx streamed for ever is delivered, and the connection is closed by the platform, not the deadline", async () => {
    const out = await send(`http://127.0.0.1:${port}/flood`, true, 60_000);
    expect(out).toMatchObject({ ok: true, statusCode: 200, error: null });
    await waitFor(() => flooded.closed, { timeoutMs: 10_000, what: 'the flooding connection to close' });
    // The socket's buffers on both sides hold a few MB at most; a reader that kept reading would have taken GBs in 60 s.
    expect(flooded.bytes).toBeLessThan(32 * 1024 * 1024);
  });

  it('a 101 Switching Protocols is a failed attempt, answered at once: the attempt never waits on a connection it has no use for', async () => {
    // It hung for ever: node:http hands a 101 to the request's 'upgrade' listeners (there were none), emits no
    // 'response' and no 'error', and the deadline's abort finds the request already destroyed (this test timed out, its 5 s deadline long past). The delivery job
    // stayed active (its lock renewed by a live worker) and took one of the worker's webhook slots for good.
    const out = await send(`http://127.0.0.1:${port}/switch`, true, 5_000);
    expect(out).toMatchObject({ ok: false, statusCode: 101, error: 'HTTP 101' });
  });

  it('gives up on a receiver that does not answer within the timeout', async () => {
    const out = await send(`http://127.0.0.1:${port}/silent`, true, 300);
    expect(out).toMatchObject({ ok: false, statusCode: null });
    expect(out.error).toMatch(/timed out/);
  });
});
