import { describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import { createLogger, redactUrl } from '../../src/platform/telemetry/logger.ts';
import { redactedQueryAttribute } from '../../src/platform/telemetry/attributes.ts';
import { requestContext } from '../../src/platform/tenancy/request-context.ts';

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
