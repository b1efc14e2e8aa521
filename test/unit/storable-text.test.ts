import { describe, expect, it } from 'vitest';
import { isUnstorableText, storableText } from '../../src/platform/http/json-text.ts';

describe('storableText: what PostgreSQL text and jsonb can hold', () => {
  it.each([
    ['a NUL removed', 'a\u0000b', 10, 'ab'],
    ['a lone high surrogate replaced', 'a\ud83db', 10, 'a\ufffdb'],
    ['a lone low surrogate replaced', 'a\ude00b', 10, 'a\ufffdb'],
    ['a pair kept', 'a\u{1F600}b', 10, 'a\u{1F600}b'],
    ['a cut inside a pair drops the pair', `${'x'.repeat(3)}\u{1F600}`, 4, 'xxx'],
    ['a cut after a pair keeps it', `xx\u{1F600}y`, 4, 'xx\u{1F600}'],
    ['a short text as it is', 'plain', 2000, 'plain'],
  ])('%s', (_what, text, max, expected) => {
    const out = storableText(text, max);
    expect(out).toBe(expected);
    expect(out.length).toBeLessThanOrEqual(max);
    expect(isUnstorableText(out)).toBe(false);
  });
});
