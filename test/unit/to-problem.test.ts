import { describe, expect, it } from 'vitest';
import { toProblem } from '../../src/platform/errors/to-problem.ts';

/** body-parser raises http-errors style errors (status + type) before any route runs. */
const parserError = (status: number, type: string) => Object.assign(new Error('parser'), { status, type, expose: true });

describe('toProblem for body-parser errors', () => {
  it('titles a too-large body 413 Content Too Large', () => {
    expect(toProblem(parserError(413, 'entity.too.large'), 'r1').problem).toMatchObject({ status: 413, title: 'Content Too Large', code: 'payload_too_large', request_id: 'r1' });
  });

  it('titles an unsupported charset 415 Unsupported Media Type', () => {
    expect(toProblem(parserError(415, 'charset.unsupported')).problem).toMatchObject({ status: 415, title: 'Unsupported Media Type', code: 'unsupported_encoding' });
  });

  it('keeps malformed JSON a 400 Bad Request', () => {
    expect(toProblem(parserError(400, 'entity.parse.failed')).problem).toMatchObject({ status: 400, title: 'Bad Request', code: 'malformed_json' });
  });
});
