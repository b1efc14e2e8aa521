import { describe, expect, it } from 'vitest';
import { raw } from '@mikro-orm/core';
import { bindParameters } from '../../src/platform/db/binding-driver.ts';
import { PreparedNames, StatementBatch, inlineStatement } from '../../src/platform/db/statement-batch.ts';

const platform = { formatDate: (d: Date) => d.toISOString() };

describe('bindParameters: MikroORM statements with bound parameters instead of written-in ones', () => {
  it('numbers the placeholders and binds strings, numbers, booleans, null, dates (as MikroORM writes them) and plain objects (as JSON)', () => {
    const at = new Date('2026-12-02T10:11:12.345Z');
    expect(bindParameters('insert into t (a, b, c, d, e, f, g) values (?, ?, ?, ?, ?::jsonb, ?, ?)', ["o'brien", 2.5, true, null, { k: [1] }, at, 10n], platform)).toEqual({
      text: 'insert into t (a, b, c, d, e, f, g) values ($1, $2::numeric, $3::bool, $4, $5::jsonb, $6, $7)',
      values: ["o'brien", 2.5, true, null, '{"k":[1]}', '2026-12-02T10:11:12.345Z', '10'],
    });
  });

  it('types a number or boolean as PostgreSQL types the literal MikroORM would have written in', () => {
    expect(bindParameters('select ?, ?, ?, ?, ?, ?', [5, -2_147_483_648, 3_000_000_000, 2.5, 1e21, false], platform)!.text).toBe(
      'select $1::int4, $2::int4, $3::int8, $4::numeric, $5::numeric, $6::bool',
    );
  });

  it('leaves to MikroORM what binding would change: arrays (expanded into lists), raw fragments, buffers, non-finite numbers, undefined', () => {
    for (const value of [[1, 2], raw('now()'), Buffer.from('x'), Number.NaN, undefined]) {
      expect(bindParameters('select * from t where a in (?)', [value], platform)).toBeUndefined();
    }
  });

  it('leaves to MikroORM texts it could misread: identifiers (??), escaped placeholders, dollar signs, several statements, a placeholder count that does not match', () => {
    expect(bindParameters('select ?? from t', ['a'], platform)).toBeUndefined();
    expect(bindParameters('select \\? from t where a = ?', [1], platform)).toBeUndefined();
    expect(bindParameters('select $1, ?', [1], platform)).toBeUndefined();
    expect(bindParameters('select ?; select ?', [1, 2], platform)).toBeUndefined();
    expect(bindParameters('select ?, ?', [1], platform)).toBeUndefined();
    expect(bindParameters(`select ${Array(70_000).fill('?').join(', ')}`, Array(70_000).fill(1), platform)).toBeUndefined();
  });

  it('a bound statement written back in reads as MikroORM would have written it', () => {
    const bound = bindParameters("select ? as a, ? as b, ? as c where d = ?", ["it's \\ here", 3, null, false], platform)!;
    expect(inlineStatement(bound)).toBe(`select  E'it''s \\\\ here' as a, 3::int4 as b, null as c where d = false::bool`);
  });
});

describe('StatementBatch.text: what a hook on pg.Client#query records (OpenTelemetry\'s pg spans)', () => {
  it('writes the values in once, however often the text is read (the pg instrumentation reads it twice a message)', () => {
    let serialised = 0;
    const value = { toPostgres: () => (serialised++, '{"output":"large"}') };
    const batch = new StatementBatch([{ text: 'begin' }, { text: 'insert into t (a, b) values ($1, $2::int4)', values: [value, 7] }, { text: 'commit' }], undefined, new PreparedNames());
    const texts = [batch.text, batch.text, batch.text];
    expect(texts).toEqual(Array(3).fill(`begin;\ninsert into t (a, b) values ('{"output":"large"}', 7::int4);\ncommit`));
    expect(serialised).toBe(1);
  });
});

describe('StatementBatch: a Flush after each statement that may wait but the last', () => {
  it("asks PostgreSQL for each such statement's answer at once, so a client bounding the server's silence hears of each (coalescing-client.ts)", () => {
    const wire: string[] = [];
    const record =
      (kind: string) =>
      (msg?: { text?: string }) =>
        wire.push(msg?.text ? `${kind} ${msg.text}` : kind);
    const connection = {
      stream: {},
      parse: record('parse'),
      bind: () => {},
      describe: () => {},
      execute: () => wire.push('execute'),
      close: () => {},
      flush: record('flush'),
      sync: record('sync'),
      sendCopyFail: () => {},
    };
    const statements = [{ text: 'begin' }, { text: 'select set_config($1, $2, true)', values: ['app.tenant_id', 't'] }, { text: 'select 1 as a', values: [] }, { text: 'select 2 as b', values: [] }, { text: 'commit' }];
    new StatementBatch(statements, undefined, new PreparedNames(false), (s) => !/^(begin|select set_config)/.test(s.text)).submit(connection as never);
    expect(wire.filter((w) => !w.startsWith('parse'))).toEqual(['execute', 'execute', 'execute', 'flush', 'execute', 'flush', 'execute', 'sync']);
    wire.length = 0;
    // Without the predicate (no answer bound): one answer at the Sync, as before.
    new StatementBatch(statements, undefined, new PreparedNames(false)).submit(connection as never);
    expect(wire.filter((w) => w === 'flush')).toEqual([]);
  });
});
