import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { AppError } from '../../src/platform/errors/app-error.ts';
import { fingerprintedParts, parseIdempotencyKey, requestFingerprint, submissionHash } from '../../src/platform/idempotency/idempotency.service.ts';

function rejection(raw: string): AppError {
  try {
    parseIdempotencyKey(raw);
  } catch (e) {
    if (e instanceof AppError) return e;
    throw e;
  }
  throw new Error(`expected ${JSON.stringify(raw)} to be rejected`);
}

describe('parseIdempotencyKey', () => {
  it('treats an absent header as no key', () => {
    expect(parseIdempotencyKey(undefined)).toBeUndefined();
  });

  it('accepts a bare token and the same key as a Structured Field string', () => {
    expect(parseIdempotencyKey('8e03978e-40d5-43e8-bc93-6894a57f9324')).toBe('8e03978e-40d5-43e8-bc93-6894a57f9324');
    expect(parseIdempotencyKey('"8e03978e-40d5-43e8-bc93-6894a57f9324"')).toBe('8e03978e-40d5-43e8-bc93-6894a57f9324');
  });

  it('unescapes \\" and \\\\ inside an sf-string', () => {
    expect(parseIdempotencyKey('"a\\"b\\\\c"')).toBe('a"b\\c');
    expect(parseIdempotencyKey('"a\\\\"')).toBe('a\\');
  });

  it('accepts and ignores the parameters RFC 8941 allows after an Item\'s string: the key is the string alone', () => {
    expect(parseIdempotencyKey('"abc";v=1')).toBe('abc');
    expect(parseIdempotencyKey('"abc"; a; b=?0;c="x;y\\"z";d=tok/en:1;e=-1.5;f=:aGk=:')).toBe('abc');
  });

  it('takes the key from the string alone, whatever it holds, and measures it without its parameters', () => {
    // A `;` or an escaped quote inside the string is the key's, not the start of a parameter.
    expect(parseIdempotencyKey('"a;v=1"')).toBe('a;v=1');
    expect(parseIdempotencyKey('"a\\";v=1";w=2')).toBe('a";v=1');
    expect(parseIdempotencyKey(`"${'k'.repeat(255)}";v=1`)).toBe('k'.repeat(255));
    expect(rejection(`"${'k'.repeat(256)}";v=1`).status).toBe(400);
    // RFC 8941 allows spaces after the `;` only.
    expect(parseIdempotencyKey('"abc";   v=1')).toBe('abc');
  });

  it('ignores surrounding optional whitespace', () => {
    expect(parseIdempotencyKey('  abc  ')).toBe('abc');
    expect(parseIdempotencyKey('\t"abc"\t')).toBe('abc');
  });

  it('strips only HTTP whitespace (space, tab) around the key: a no-break space there is a byte of the key, not printable ASCII', () => {
    // Node hands a header's obs-text byte 0xA0 over as U+00A0, which String.prototype.trim would strip.
    for (const raw of ['abc\u00a0', '\u00a0abc', '"abc"\u00a0', '\u00a0"abc"', '\ufeffabc']) expect(rejection(raw).status).toBe(400);
  });

  it('accepts exactly 255 characters, bare or quoted', () => {
    const k = 'k'.repeat(255);
    expect(parseIdempotencyKey(k)).toBe(k);
    expect(parseIdempotencyKey(`"${k}"`)).toBe(k);
  });

  it.each([
    ['empty', ''],
    ['blank', '   '],
    ['an empty sf-string', '""'],
    ['256 characters', 'k'.repeat(256)],
    ['256 characters inside quotes', `"${'k'.repeat(256)}"`],
    ['non-ASCII', 'clé'],
    ['a control character', 'a\u0001b'],
    ['a tab', 'a\tb'],
    ['DEL', 'a\u007fb'],
    ['an unescaped quote inside an sf-string', '"a"b"'],
    ['an invalid escape inside an sf-string', '"a\\nb"'],
    ['an unterminated sf-string', '"abc'],
    ['text after the closing quote', '"abc"def'],
    ['an escaped backslash followed by a stray quote', '"a\\\\"b"'],
    ['a parameter with an upper-case name', '"abc";V=1'],
    ['a parameter without a name', '"abc";=1'],
    ['a parameter with a broken value', '"abc";v="x'],
    ['a second item after the string', '"abc", "def"'],
    ['a stray semicolon', '"abc";'],
    ['a space before a parameter\'s semicolon', '"abc" ;v=1'],
    ['a tab after a parameter\'s semicolon', '"abc";\tv=1'],
    ['spaces around a parameter\'s =', '"abc";v = 1'],
    ['an integer parameter of 16 digits', '"abc";v=1234567890123456'],
    ['a decimal parameter without a fraction', '"abc";v=1.'],
    ['a parameter followed by a second item', '"abc";v=1, "def"'],
  ])('rejects %s with a 400 validation problem', (_what, raw) => {
    const e = rejection(raw);
    expect(e.status).toBe(400);
    expect(e.code).toBe('validation_failed');
    expect(e.extensions.errors).toEqual([expect.objectContaining({ path: 'Idempotency-Key' })]);
  });

  it('accepts every printable ASCII key of 1–255 characters as an sf-string, and bare when it holds no comma (the bare form equals it)', () => {
    const printable = fc.string({ unit: fc.integer({ min: 0x21, max: 0x7e }).map((c) => String.fromCharCode(c)), minLength: 1, maxLength: 253 });
    fc.assert(
      fc.property(printable, (k) => {
        const key = `k${k}`;
        expect(parseIdempotencyKey(`"${key.replace(/[\\"]/g, '\\$&')}"`)).toBe(key);
        if (key.includes(',')) expect(rejection(key).status).toBe(400);
        else expect(parseIdempotencyKey(key)).toBe(key);
      }),
    );
  });

  it('refuses a list, as a proxy folds two header lines into one, as sent more than once; a comma inside quotes is the string\'s', () => {
    for (const raw of ['k1, k2', 'k1,k2', 'k1,', ',k1', '"k1", "k2"', '"k1",k2', '"k1";v=1, "k2"', '"k1";v="a,b"\t, k2']) {
      expect(rejection(raw).extensions.errors, raw).toEqual([{ path: 'Idempotency-Key', message: expect.stringContaining('sent more than once') }]);
    }
    expect(parseIdempotencyKey('"k1, k2"')).toBe('k1, k2');
    expect(parseIdempotencyKey('"k1";v="a,b"')).toBe('k1');
  });
});

describe('requestFingerprint', () => {
  const route = '/api/v1/golden-path/run';

  it('ignores key order and whitespace of the JSON body', () => {
    const a = JSON.parse('{"partner":{"name":"Acme","country":"SA"},"currency":"SAR","n":[1,2,{"x":1,"y":2}]}');
    const b = JSON.parse(' {\n "n" : [ 1, 2, { "y": 2, "x": 1 } ],\n "currency":"SAR",\n "partner": { "country":"SA", "name":"Acme" } }\n');
    expect(requestFingerprint('POST', route, a)).toBe(requestFingerprint('POST', route, b));
  });

  it('is key-order invariant for arbitrary JSON objects', () => {
    fc.assert(
      fc.property(fc.dictionary(fc.string({ maxLength: 8 }), fc.jsonValue(), { maxKeys: 8 }), (obj) => {
        const reversed = Object.fromEntries(Object.entries(obj).reverse());
        expect(requestFingerprint('POST', route, reversed)).toBe(requestFingerprint('POST', route, obj));
      }),
    );
  });

  it('covers the validated query (in any parameter order), and leaves an empty one out: a key stored before the query was covered still matches its faithful retry', () => {
    const cancel = '/api/v1/runs/:id/cancel';
    const params = { id: '3f2504e0-4f89-41d3-9a0c-0305e82c3301' };
    const body = { reason: 'x' };
    // Computed by the release before the query was covered, for a request without one (every stored key's).
    expect(requestFingerprint('POST', cancel, fingerprintedParts(params, {}, body))).toBe('3d596d3019db100ad7ad6e7486f890ca16fe539fb76bdcdf3f89308ad17f46d2');
    expect(requestFingerprint('POST', cancel, fingerprintedParts(params, undefined, body))).toBe('3d596d3019db100ad7ad6e7486f890ca16fe539fb76bdcdf3f89308ad17f46d2');
    const one = requestFingerprint('POST', cancel, fingerprintedParts(params, { mode: 'soft', notify: 'true' }, body));
    expect(one).not.toBe('3d596d3019db100ad7ad6e7486f890ca16fe539fb76bdcdf3f89308ad17f46d2');
    expect(requestFingerprint('POST', cancel, fingerprintedParts(params, { notify: 'true', mode: 'soft' }, body))).toBe(one);
    expect(requestFingerprint('POST', cancel, fingerprintedParts(params, { mode: 'hard', notify: 'true' }, body))).not.toBe(one);
  });

  it('treats the method case-insensitively and an absent body as null', () => {
    expect(requestFingerprint('post', route, undefined)).toBe(requestFingerprint('POST', route, null));
  });

  it('changes with the body, the route or the method', () => {
    const base = requestFingerprint('POST', route, { a: 1 });
    expect(requestFingerprint('POST', route, { a: 2 })).not.toBe(base);
    expect(requestFingerprint('POST', route, { a: 1, b: null })).not.toBe(base);
    expect(requestFingerprint('POST', '/api/v1/approvals/:id/decision', { a: 1 })).not.toBe(base);
    expect(requestFingerprint('PUT', route, { a: 1 })).not.toBe(base);
    expect(requestFingerprint('POST', route, [1, 2])).not.toBe(requestFingerprint('POST', route, [2, 1]));
  });

  it('is a SHA-256 hex digest', () => {
    expect(requestFingerprint('POST', route, { a: 1 })).toMatch(/^[0-9a-f]{64}$/);
  });
});

describe('submissionHash', () => {
  it('is stable per (tenant, record) and differs across tenants and records', () => {
    const t1 = '11111111-1111-4111-8111-111111111111';
    const t2 = '22222222-2222-4222-8222-222222222222';
    const r = '33333333-3333-4333-8333-333333333333';
    expect(submissionHash(t1, r)).toBe(submissionHash(t1, r));
    expect(submissionHash(t1, r)).not.toBe(submissionHash(t2, r));
    expect(submissionHash(t1, r)).not.toBe(submissionHash(t1, '44444444-4444-4444-8444-444444444444'));
  });
});
