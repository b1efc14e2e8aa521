import { hash } from 'node:crypto';
import canonicalizeImport from 'canonicalize';

// canonicalize ships CommonJS with a default export; normalise across module systems.
const canonicalizeFn = ((canonicalizeImport as unknown as { default?: unknown }).default ?? canonicalizeImport) as (v: unknown) => string | undefined;

/** RFC 8785 (JCS) canonical JSON: key order and whitespace never change the bytes. */
export function canonicalJson(value: unknown): string {
  const out = canonicalizeFn(value ?? null);
  if (out === undefined) throw new TypeError('value cannot be canonicalised as JSON');
  return out;
}

/**
 * SHA-256 in lower-case hex. The one-shot `crypto.hash` gives the same digest as createHash/update/digest
 * without building a Hash object: every keyed POST hashes twice (its fingerprint and its submission
 * hash), and the object was most of the cost (docs/performance-history.md, session 23).
 */
export function sha256Hex(input: string | Buffer): string {
  return hash('sha256', input, 'hex');
}
