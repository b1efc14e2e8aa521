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
import { newSigningSecret } from '../../src/platform/webhooks/webhook-endpoints.routes.ts';

const hits: { path: string; headers: IncomingHttpHeaders; body: string }[] = [];
let server: Server;
let port: number;

beforeAll(async () => {
  server = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      hits.push({ path: req.url ?? '', headers: req.headers, body });
      if (req.url === '/redirect') return void res.writeHead(302, { location: '/elsewhere' }).end();
      if (req.url === '/silent') return; // never answers
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
const body = JSON.stringify({ type: 'run.completed', timestamp: new Date().toISOString(), data: { run_id: 'r-1' } });
const send = (url: string, allowPrivate: boolean, timeoutMs = 5000) => postWebhook({ url, secrets: [secret], msgId: `msg-${hits.length}`, body, timeoutMs, policy: { allowPrivate, httpsOnly: false } });

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
    expect(byName.error).toMatch(/refused: localhost resolves to a non-public address/);
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

  it('gives up on a receiver that does not answer within the timeout', async () => {
    const out = await send(`http://127.0.0.1:${port}/silent`, true, 300);
    expect(out).toMatchObject({ ok: false, statusCode: null });
    expect(out.error).toMatch(/timed out/);
  });
});
