import { createHash } from 'node:crypto';
import canonicalizeImport from 'canonicalize';

// canonicalize ships CommonJS with a default export; normalise across module systems.
const canonicalizeFn = ((canonicalizeImport as unknown as { default?: unknown }).default ?? canonicalizeImport) as (v: unknown) => string | undefined;

/** RFC 8785 (JCS) canonical JSON: key order and whitespace never change the bytes. */
export function canonicalJson(value: unknown): string {
  const out = canonicalizeFn(value ?? null);
  if (out === undefined) throw new TypeError('value cannot be canonicalised as JSON');
  return out;
}

export function sha256Hex(input: string | Buffer): string {
  return createHash('sha256').update(input).digest('hex');
}
