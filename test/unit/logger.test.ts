import { describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import { createLogger, redactUrl } from '../../src/platform/telemetry/logger.ts';
import { redactedQueryAttribute, redactQuery } from '../../src/platform/telemetry/attributes.ts';
import querystring from 'node:querystring';
import express from 'express';
import { bullBoardRouter } from '../../src/platform/http/admin-board.ts';
import { httpLogger } from '../../src/platform/telemetry/http-logger.ts';
import { requestContext } from '../../src/platform/tenancy/request-context.ts';
import { waitFor } from '../helpers/poll.ts';

function capture() {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk, _enc, cb) {
      lines.push(...String(chunk).split('\n').filter(Boolean));
      cb();
    },
  });
  return { lines, logger: createLogger({ level: 'info', name: 'test', destination }) };
}

describe('logger', () => {
  it('redacts authorization headers, cookies, tokens and passwords', () => {
    const { lines, logger } = capture();
    logger.info({
      req: { headers: { authorization: 'Bearer eyJhbGciOi.secret.sig', cookie: 'dealix_admin_token=eyJ.x.y', host: 'api' } },
      res: { headers: { 'set-cookie': 'dealix_admin_token=eyJ.x.y' } },
      token: 't0ken',
      body: { password: 'hunter2-hunter2', token: 'nested' },
    }, 'request');
    const line = lines[0]!;
    for (const secret of ['eyJhbGciOi', 'eyJ.x.y', 't0ken', 'hunter2', 'nested']) expect(line).not.toContain(secret);
    const parsed = JSON.parse(line);
    expect(parsed.req.headers).toEqual({ authorization: '[redacted]', cookie: '[redacted]', host: 'api' });
    expect(parsed.body).toEqual({ password: '[redacted]', token: '[redacted]' });
  });

  it('redacts secret query values in URLs', () => {
    expect(redactUrl('/admin/queues?token=eyJ.a.b&x=1')).toBe('/admin/queues?token=[redacted]&x=1');
    expect(redactUrl('/x?a=1&access_token=abc')).toBe('/x?a=1&access_token=[redacted]');
    expect(redactUrl('/x?tokens=keep')).toBe('/x?tokens=keep');
  });

  it('redacts a secret by its decoded name in any case, each time it is repeated, also without a value, and keeps the other parameters', () => {
    expect(redactUrl('/x?Token=a&%74oken=b&token=c&ACCESS%5Ftoken=d&password')).toBe('/x?Token=[redacted]&%74oken=[redacted]&token=[redacted]&ACCESS%5Ftoken=[redacted]&password=[redacted]');
    expect(redactUrl('/x?cursor=abc&status=failed&status=pending&limit=5')).toBe('/x?cursor=abc&status=failed&status=pending&limit=5');
  });

  it("redacts secrets in a URL's fragment too: Node passes a raw request target's `#…` on to the request log", () => {
    // An OAuth-style `#access_token=…` pasted into a request: no parser reads it, but req.url keeps it.
    expect(redactUrl('/x?a=1#access_token=abc&state=s')).toBe('/x?a=1#access_token=[redacted]&state=s');
    expect(redactUrl('/x#access_token=abc')).toBe('/x#access_token=[redacted]');
    expect(redactUrl('/x?a=1#&token=abc')).toBe('/x?a=1#&token=[redacted]');
    expect(redactUrl('/x#?token=abc')).toBe('/x#?token=[redacted]');
  });

  it('redacts a secret sent under a bracketed name (token[], token[0], token[a][b], encoded, any case), not a longer name that starts alike', () => {
    expect(redactUrl('/x?token[]=a&token[0]=b&token[a][b]=c&TOKEN%5B%5D=d&access_token%5b0%5d=e&%70assword[x]&limit=5')).toBe(
      '/x?token[]=[redacted]&token[0]=[redacted]&token[a][b]=[redacted]&TOKEN%5B%5D=[redacted]&access_token%5b0%5d=[redacted]&%70assword[x]=[redacted]&limit=5',
    );
    expect(redactUrl('/x?tokens[]=keep&token_hint[]=keep&status[]=failed&[token]=keep')).toBe('/x?tokens[]=keep&token_hint[]=keep&status[]=failed&[token]=keep');
    expect(redactUrl('/x#token[]=abc&state=s')).toBe('/x#token[]=[redacted]&state=s');
    expect(redactedQueryAttribute('/x?token%5B%5D=abc&limit=5')).toEqual({ 'url.query': 'token%5B%5D=[redacted]&limit=5' });
  });

  it('redacts a JWT (compact JWS or JWE: a header segment starting eyJ, base64url, encoded or not) under any name; other values stay', () => {
    const jwt = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl';
    const jwe = 'eyJhbGciOiJSU0EtT0FFUCJ9.a2V5.aXY.Y2lwaGVy.dGFn';
    expect(redactUrl(`/x?next=${jwt}&q=${jwe}&n%65xt=%65yJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.&limit=5#state=${jwt}`)).toBe('/x?next=[redacted]&q=[redacted]&n%65xt=[redacted]&limit=5#state=[redacted]');
    expect(redactedQueryAttribute(`/x?cursor=${jwt}`)).toEqual({ 'url.query': 'cursor=[redacted]' });
    // Not a JWT: a cursor, a dotted name, an id, a value with eyJ elsewhere, a two-segment value.
    for (const v of ['eyJhbGciOiJIUzI1NiJ9', 'a.b.c', 'eyJ.x', 'xeyJhbGci.eyJzdWIi.sig', 'eyJ a.b.c', 'dealix.run.v1']) expect(redactUrl(`/x?v=${v}`), v).toBe(`/x?v=${v}`);
  });

  // Re-review: the JWT rule matched a whole value only, and a value whose decoding threw was read raw, so a token
  // reached the log and the span by other spellings. Each case is also what the query parser hands req.query.
  it('redacts a JWT inside a value, however spelled: a prefix, a nested URL, a `;` pair, a stray or non-UTF-8 escape, encoded twice', () => {
    const jwt = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl';
    const leaks = [
      `q=Bearer%20${jwt}`,
      `q=Bearer+${jwt}`,
      `next=%2Fadmin%2Fqueues%3Ftoken%3D${jwt}`,
      `next=/admin/queues%3Fa=1%26token=${jwt}`,
      `a=1;token=${jwt}`,
      `q=${jwt}%`,
      `q=${jwt}%FF`,
      `q=%FF${jwt}`,
      `q=${jwt.replace(/\./g, '%252E')}`,
      `q=${jwt.replace(/\./g, '%25252E')}`,
    ];
    for (const query of leaks) {
      const name = query.slice(0, query.indexOf('='));
      expect(redactUrl(`/x?${query}&limit=5`), query).toBe(`/x?${name}=[redacted]&limit=5`);
      expect(redactedQueryAttribute(`/x?${query}`), query).toEqual({ 'url.query': `${name}=[redacted]` });
      expect(redactQuery(querystring.parse(`${query}&limit=5`) as Record<string, unknown>), query).toEqual({ [name]: '[redacted]', limit: '5' });
    }
    expect(redactUrl(`/x#state=s;access_token=${jwt}%`)).toBe('/x#state=[redacted]');
  });

  it('redacts a secret pair nested in a value (`next=/x?token=…`, `a=1;password=…`) and a secret name in brackets (`user[password]`)', () => {
    for (const query of ['next=%2Fadmin%3Ftoken%3Dopaque', 'next=/admin%3Fpassword=hunter2', 'a=1;password=hunter2', 'user[password]=hunter2', 'auth%5Btoken%5D=opaque', 'x[a][Access_Token]=opaque']) {
      const name = query.slice(0, query.indexOf('='));
      expect(redactUrl(`/x?${query}&limit=5`), query).toBe(`/x?${name}=[redacted]&limit=5`);
      expect(redactQuery(querystring.parse(query) as Record<string, unknown>), query).toEqual({ [querystring.unescape(name)]: '[redacted]' });
    }
    // Not secrets: a longer name, a nested pair under another name, a name that is only brackets, an `=` in a value.
    for (const query of ['next=%2Fadmin%3Ftokens%3Dx', 'user[name]=alice', '[token]=keep', 'filter=a%3Db', 'q=token']) expect(redactUrl(`/x?${query}`), query).toBe(`/x?${query}`);
  });

  it("logs a refused Bull Board action's path with its secrets redacted", async () => {
    const { lines, logger } = capture();
    const app = express().use('/admin/queues', bullBoardRouter([], { readOnly: true, basePath: '/admin/queues', logger }).router);
    const server = app.listen(0);
    try {
      const { port } = server.address() as { port: number };
      const jwt = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl';
      const res = await fetch(`http://127.0.0.1:${port}/admin/queues/api/queues/q/empty?token=${jwt}&next=Bearer%20${jwt}`, { method: 'PUT' });
      expect(res.status).toBe(405);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
    const refused = lines.map((l) => JSON.parse(l)).find((l) => l.security_event === 'board_action_refused');
    expect(refused?.path).toBe('/admin/queues/api/queues/q/empty?token=[redacted]&next=[redacted]');
    for (const line of lines) expect(line).not.toContain('c2lnbmF0dXJl');
  });

  it("redacts a redirect's Location in the request log: one reflecting the query carried its token whole", async () => {
    const { lines, logger } = capture();
    const app = express()
      .use(httpLogger(logger))
      .get('/r', (req, res) => res.redirect(302, `/elsewhere${req.url.slice(2)}`));
    const server = app.listen(0);
    const jwt = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl';
    try {
      const { port } = server.address() as { port: number };
      expect((await fetch(`http://127.0.0.1:${port}/r?next=${jwt}&token=opaque1&limit=5`, { redirect: 'manual' })).status).toBe(302);
      await waitFor(() => lines.some((l) => l.includes('request completed')), { what: 'the request log line' });
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
    const line = lines.find((l) => l.includes('request completed'))!;
    expect(JSON.parse(line).res.headers.location).toBe('/elsewhere?next=[redacted]&token=[redacted]&limit=5');
    for (const secret of ['c2lnbmF0dXJl', 'opaque1']) expect(line).not.toContain(secret);
  });

  it("names a request's url.query by its query alone, redacted: never its fragment, none without a query", () => {
    expect(redactedQueryAttribute('/x?token=abc&limit=5#frag')).toEqual({ 'url.query': 'token=[redacted]&limit=5' });
    expect(redactedQueryAttribute('/x#?token=abc')).toEqual({});
    expect(redactedQueryAttribute('/x?')).toEqual({});
    expect(redactedQueryAttribute('/x')).toEqual({});
  });

  it('adds correlation, tenant and run ids inside a request or job context, without repeating bound fields', () => {
    const { lines, logger } = capture();
    requestContext.run({ requestId: 'r1', correlationId: 'c-1', runId: 'run-1', principal: { sub: 's', tenantId: 'tenant-1', roles: [] } }, () => {
      logger.info('inside');
      logger.child({ correlation_id: 'c-1', step: 'x' }).info('child');
    });
    logger.info('outside');
    const [inside, child, outside] = lines;
    expect(JSON.parse(inside!)).toMatchObject({ correlation_id: 'c-1', tenant_id: 'tenant-1', run_id: 'run-1' });
    expect(child!.match(/"correlation_id"/g)).toHaveLength(1);
    expect(JSON.parse(child!)).toMatchObject({ correlation_id: 'c-1', tenant_id: 'tenant-1', run_id: 'run-1', step: 'x' });
    expect(JSON.parse(outside!)).not.toHaveProperty('correlation_id');
  });
});
