/**
 * Resolving a webhook receiver's host (resolve.ts; ADR 0013, *Resolving a receiver's host*) against a real
 * DNS server written here (test/helpers/dns-server.ts: UDP on 127.0.0.1, answering, holding or never
 * answering a name) — node:dns itself is not replaced. A receiver's host name is tenant input: one whose
 * DNS never answers must fail its own attempts, within the platform's bound, and hold up nobody else —
 * not the other deliveries, not libuv's threadpool (node:dns `lookup`, getaddrinfo, held a thread for the
 * system resolver's whole timeout, and a few such deliveries starved the worker's pool).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:http';
import { stat } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { postWebhook } from '../../src/platform/webhooks/send.ts';
import { HostResolver } from '../../src/platform/webhooks/resolve.ts';
import { newSigningSecret } from '../../src/platform/webhooks/webhook-endpoints.routes.ts';
import { startDnsServer, type TestDns } from '../helpers/dns-server.ts';
import { holdThreadpool } from '../helpers/hold-threadpool.ts';
import { waitFor, within } from '../helpers/poll.ts';
import { newTenant, runUsers, SAMPLE_SUBMISSION, type TestStack } from '../helpers/stack.ts';
import { createEndpoint, startWebhookStack, stopWebhookStack, submit, type Receiver } from '../helpers/webhooks.ts';

/** The bound a name that never answers is given up at; names that answer are given far longer (a loaded machine). */
const DNS_BOUND_MS = 500;
const PATIENT_MS = 20_000;

describe('a delivery attempt resolves its host without the threadpool', () => {
  let dns: TestDns;
  let server: Server;
  let port: number;
  const hits: string[] = [];
  beforeAll(async () => {
    dns = await startDnsServer();
    server = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        hits.push(`${req.headers.host} ${req.url}`);
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    server?.closeAllConnections();
    await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
    await dns?.close();
  });

  const secret = newSigningSecret();
  const resolver = (timeoutMs = PATIENT_MS) => new HostResolver({ servers: [dns.server], timeoutMs });
  // The attempt's own bound is above the DNS bound: an attempt that ends naming DNS ended at the DNS bound.
  const send = (url: string, allowPrivate: boolean, r = resolver()) => postWebhook({ url, secrets: [secret], msgId: 'msg-dns', body: '{}', timeoutMs: PATIENT_MS + 5_000, policy: { allowPrivate, httpsOnly: false }, resolver: r });

  it("with every threadpool thread held: a name the DNS server answers is delivered, the hosts file's localhost too, and a name whose DNS never answers fails at the DNS bound, naming it", async () => {
    dns.answer('hook.dns.test', { a: ['127.0.0.1'] });
    dns.silence('silent.dns.test');
    const pool = holdThreadpool();
    // The premise: a threadpool task submitted now (after the holds) cannot run until they are released.
    let statDone = false;
    const probe = stat('/').then(() => (statDone = true));
    try {
      // Each took a thread with getaddrinfo (dns.lookup), so waited here for one: `timed out after 25000 ms`, all three.
      const [byDns, byHosts, silent] = await Promise.all([send(`http://hook.dns.test:${port}/by-dns`, true), send(`http://localhost:${port}/by-hosts`, true), send(`http://silent.dns.test:${port}/silent`, true, resolver(DNS_BOUND_MS))]);
      expect(statDone, 'the threadpool was held throughout').toBe(false);
      expect(byDns).toMatchObject({ ok: true, statusCode: 204, error: null });
      expect(byHosts).toMatchObject({ ok: true, statusCode: 204, error: null });
      expect(silent).toMatchObject({ ok: false, statusCode: null, error: `ETIMEOUT: no DNS answer for silent.dns.test within ${DNS_BOUND_MS} ms` });
      expect(hits.sort()).toEqual([`hook.dns.test:${port} /by-dns`, `localhost:${port} /by-hosts`]);
    } finally {
      await pool.release();
      await probe;
    }
    // One resolution, both families, for the guard and the connection alike (nothing resolves the name again: the
    // addresses checked are those connected to); the hosts file's name was never asked.
    expect(dns.queries.filter((q) => q.name === 'hook.dns.test').map((q) => q.type).sort()).toEqual(['A', 'AAAA']);
    expect(dns.asked('localhost')).toBe(false);
  });

  it("a tenant's hosts whose DNS has not answered hold up no other delivery: eight attempts wait for their answers while another is delivered", async () => {
    const held = Array.from({ length: 8 }, (_, i) => `held-${i}.dns.test`);
    for (const name of held) dns.hold(name, { a: ['127.0.0.1'] });
    dns.answer('other.dns.test', { a: ['127.0.0.1'] });
    let settled = 0;
    const waiting = held.map((name) => send(`http://${name}:${port}/held`, true).finally(() => settled++));
    try {
      await waitFor(() => held.every((name) => dns.asked(name)), { timeoutMs: 20_000, what: 'every held name to be asked of the DNS server' });
      const other = await send(`http://other.dns.test:${port}/other`, true);
      expect(other).toMatchObject({ ok: true, statusCode: 204 });
      expect(settled, 'no held attempt had settled').toBe(0);
    } finally {
      for (const name of held) dns.release(name);
    }
    expect((await Promise.all(waiting)).map((o) => o.statusCode)).toEqual(held.map(() => 204));
  });

  it("a name whose server never answers one family's query is delivered to the other family's addresses once the resolution delay has passed, not at the DNS bound, and those are checked", async () => {
    // Servers (and middleboxes) that drop AAAA queries are a known breakage: the A answer must not be thrown away
    // because the AAAA query is still unanswered when the bound passes — every attempt to such a name failed with
    // ETIMEOUT — nor wait for the bound at all: once one family has answered, the other gets RFC 8305's resolution
    // delay (50 ms). The bound here is 10 minutes: each attempt below answered within the test's deadlines (under
    // the attempt's own 25 s) only because the unanswered family is not waited for to it.
    const bound = 600_000;
    dns.answerOnly('v4only.dns.test', { a: ['127.0.0.1'] }, 'AAAA');
    dns.answerOnly('v6only.dns.test', { aaaa: ['::1'] }, 'A');
    const r = resolver(bound);
    expect(await within(r.resolve('v4only.dns.test'), "the resolution of a name whose AAAA query is dropped", 30_000)).toEqual([{ address: '127.0.0.1', family: 4 }]);
    expect(await within(r.resolve('v6only.dns.test'), "the resolution of a name whose A query is dropped", 30_000)).toEqual([{ address: '::1', family: 6 }]);
    const delivered = await within(send(`http://v4only.dns.test:${port}/v4only`, true, r), 'the delivery to v4only.dns.test', 30_000);
    expect(delivered).toMatchObject({ ok: true, statusCode: 204, error: null });
    expect(hits).toContain(`v4only.dns.test:${port} /v4only`);
    // The family that answered is what the connection would use: checked as any answer is.
    const refused = await within(send(`http://v6only.dns.test:${port}/v6only`, false, r), 'the attempt to v6only.dns.test', 30_000);
    expect(refused).toMatchObject({ ok: false, statusCode: null });
    expect(refused.error).toMatch(/refused: v6only\.dns\.test does not resolve to a public address/);
  });

  it('the SSRF guard checks every address of both families the DNS server gives; a name with none is ENOTFOUND with the guard off, and refused as a non-public one is with it on', async () => {
    dns.answer('private.dns.test', { a: ['127.0.0.1'] });
    // A public A record and a loopback AAAA: one non-public address refuses the name. The AAAA answer is sent first, so
    // that the resolver has it however late it reads the A one (it waits only its resolution delay for a late AAAA).
    dns.answerFirst('mixed.dns.test', { a: ['93.184.215.14'], aaaa: ['::1'] }, 'AAAA');
    dns.answer('nothing.dns.test', {});
    const before = hits.length;
    const priv = await send(`http://private.dns.test:${port}/private`, false);
    expect(priv).toMatchObject({ ok: false, statusCode: null });
    expect(priv.error).toMatch(/refused: private\.dns\.test does not resolve to a public address/);
    const mixed = await send(`http://mixed.dns.test:${port}/mixed`, false);
    expect(mixed.error).toMatch(/refused: mixed\.dns\.test does not resolve to a public address/);
    expect(mixed.error).not.toMatch(/::1|127\.0\.0\.1|loopback/);
    const none = await send(`http://nothing.dns.test:${port}/nothing`, true);
    expect(none).toMatchObject({ ok: false, error: 'ENOTFOUND: nothing.dns.test has no address in DNS' });
    const unknown = await send(`http://unknown.dns.test:${port}/unknown`, true);
    expect(unknown).toMatchObject({ ok: false, error: 'ENOTFOUND: unknown.dns.test has no address in DNS' });
    // With the guard on, a delivery's last_error (the tenant reads it) does not tell an internal name from one that does not exist.
    const guarded = await send(`http://unknown.dns.test:${port}/unknown`, false);
    expect(guarded).toMatchObject({ ok: false, statusCode: null });
    expect(guarded.error!.replace('unknown.dns.test', '<host>')).toBe(priv.error!.replace('private.dns.test', '<host>'));
    expect(hits.length).toBe(before);
  });
});

describe('deliveries through a worker whose WEBHOOK_DNS_SERVERS is the test DNS server', () => {
  let dns: TestDns;
  let stack: TestStack;
  let receiver: Receiver;
  beforeAll(async () => {
    dns = await startDnsServer();
    ({ stack, receiver } = await startWebhookStack({ WEBHOOK_DNS_SERVERS: dns.server, WEBHOOK_DNS_TIMEOUT: '2s', WEBHOOK_RETRY_BASE: '200ms' }));
  }, 120_000);
  afterAll(async () => {
    await stopWebhookStack(stack, receiver);
    await dns?.close();
  });

  it('a host the DNS server resolves to 127.0.0.1 (private networks allowed) is delivered; while its DNS does not answer, its attempts fail naming the DNS timeout and are retried', async () => {
    const port = new URL(receiver.base).port;
    dns.answer('receiver.dns.test', { a: ['127.0.0.1'] });
    const tenantId = newTenant();
    const admin = await stack.token({ tenantId, sub: 'admin-dns', roles: ['admin'] });
    const created = await createEndpoint(stack, admin, { url: `http://receiver.dns.test:${port}/dns`, events: ['approval.requested'] });
    expect(created.status, created.text).toBe(201);
    const users = await runUsers(stack, tenantId);
    await submit(stack, users.submitter, SAMPLE_SUBMISSION);
    const delivered = await waitFor(async () => (await rows(created.json.id)).find((d) => d.status === 'delivered'), { timeoutMs: 30_000, what: 'the first delivery' });
    expect(delivered.last_error).toBeNull();
    expect(receiver.received.filter((r) => r.path === '/dns')).toHaveLength(1);

    // The tenant's DNS stops answering: the next event's attempts fail at the DNS bound, and stay owed.
    dns.silence('receiver.dns.test');
    await submit(stack, users.submitter, SAMPLE_SUBMISSION);
    const failing = await waitFor(async () => (await rows(created.json.id)).find((d) => d.status === 'pending' && d.attempts >= 1), { timeoutMs: 30_000, what: 'a failed attempt' });
    expect(failing.last_error).toBe('ETIMEOUT: no DNS answer for receiver.dns.test within 2000 ms');
    expect(failing.last_status_code).toBeNull();
    // It answers again: a retry delivers it.
    dns.answer('receiver.dns.test', { a: ['127.0.0.1'] });
    const retried = await waitFor(async () => (await rows(created.json.id)).find((d) => d.id === failing.id && d.status === 'delivered'), { timeoutMs: 30_000, what: 'the retry to deliver' });
    expect(retried.attempts).toBeGreaterThanOrEqual(2);
    expect(receiver.received.filter((r) => r.path === '/dns')).toHaveLength(2);
  });

  const rows = async (endpointId: string) =>
    (await stack.db.admin(`select id, status, attempts, last_error, last_status_code from webhook_deliveries where endpoint_id = $1 order by created_at, id`, [endpointId])).rows as Array<{
      id: string;
      status: string;
      attempts: number;
      last_error: string | null;
      last_status_code: number | null;
    }>;
});
