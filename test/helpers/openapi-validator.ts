import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js';
import addFormatsModule from 'ajv-formats';

type FormatsPlugin = (ajv: Ajv2020) => Ajv2020;
// ajv-formats is CommonJS: its plugin is the module itself, or its `default` depending on the loader.
const addFormats = ((addFormatsModule as unknown as { default?: FormatsPlugin }).default ?? addFormatsModule) as unknown as FormatsPlugin;

export interface PublishedResponse {
  status: number;
  headers: Headers;
  json: unknown;
}

/**
 * Checks bodies against the schemas an OpenAPI 3.1 document publishes for a route and status, as a
 * client would: JSON Schema 2020-12 (Ajv, strict, with formats), the document's components resolved.
 */
export function publishedSchemas(doc: any) {
  const ajv = new Ajv2020({ allErrors: true, strict: true });
  // OpenAPI's own keywords; `components` lets each compiled schema carry the document's, so its
  // `#/components/schemas/...` references resolve as they do in the document.
  ajv.addVocabulary(['example', 'discriminator', 'xml', 'externalDocs', 'components']);
  addFormats(ajv);
  const compiled = new Map<unknown, ValidateFunction>();
  const openApiPath = (p: string) => p.replace(/:([A-Za-z0-9_]+)/g, '{$1}');

  /** `schema` compiled once, with the document's components (undefined for none). */
  function compile(schema: unknown): ValidateFunction | undefined {
    if (!schema) return undefined;
    let v = compiled.get(schema);
    if (!v) {
      v = ajv.compile({ ...(schema as object), components: doc.components });
      compiled.set(schema, v);
    }
    return v;
  }

  /** The published schema of `method path` answering `status` with `contentType`; undefined if the document has none. */
  function validator(method: string, path: string, status: number, contentType: string): ValidateFunction | undefined {
    return compile(doc.paths?.[openApiPath(path)]?.[method.toLowerCase()]?.responses?.[String(status)]?.content?.[contentType]?.schema);
  }

  /** The published schema of `method path`'s JSON request body; undefined if the document has none. */
  function requestValidator(method: string, path: string): ValidateFunction | undefined {
    return compile(doc.paths?.[openApiPath(path)]?.[method.toLowerCase()]?.requestBody?.content?.['application/json']?.schema);
  }

  /** Why `body` does not match (Ajv's errors), or [] when it does. */
  function errors(v: ValidateFunction, body: unknown): unknown[] {
    return v(body) ? [] : [...(v.errors ?? [])];
  }

  /**
   * The headers the document publishes for `method path` answering `status` (names in lower case, with
   * whether each is required), or undefined when it publishes no such response.
   */
  function headers(method: string, path: string, status: number): Map<string, boolean> | undefined {
    const response = doc.paths?.[openApiPath(path)]?.[method.toLowerCase()]?.responses?.[String(status)];
    if (!response) return undefined;
    return new Map(Object.entries((response.headers ?? {}) as Record<string, { required?: boolean }>).map(([name, h]) => [name.toLowerCase(), h.required === true]));
  }

  /** The published schema of header `name` of `method path` answering `status`; undefined if the document publishes none. */
  function headerValidator(method: string, path: string, status: number, name: string): ValidateFunction | undefined {
    const published = (doc.paths?.[openApiPath(path)]?.[method.toLowerCase()]?.responses?.[String(status)]?.headers ?? {}) as Record<string, { schema?: unknown }>;
    return compile(Object.entries(published).find(([n]) => n.toLowerCase() === name.toLowerCase())?.[1]?.schema);
  }

  /** The problem codes the description of `method path`'s `status` response names — its "(code: a, b)" — or [] when it names none. */
  function problemCodes(method: string, path: string, status: number): string[] {
    const description: string = doc.paths?.[openApiPath(path)]?.[method.toLowerCase()]?.responses?.[String(status)]?.description ?? '';
    return [...description.matchAll(/\(code: ([^)]*)\)/g)].flatMap((m) => m[1]!.split(',').map((c) => c.trim().split(' ')[0]!));
  }

  return { validator, requestValidator, errors, headers, headerValidator, problemCodes };
}

/**
 * The response headers a client acts on (follows, waits for, branches on, caches by): each one a
 * response carries must be published for its route and status. ETag too, on every method: it is
 * published on a read's 200 and 304 only (docs/api.md), so one on a write's answer or a problem fails
 * here (Express's own ETag was on every body).
 */
export const ACTIONABLE_HEADERS = ['location', 'retry-after', 'idempotent-replayed', 'www-authenticate', 'cache-control', 'allow', 'etag'] as const;

/** Why the response's headers differ from those published (each a sentence), or [] when they agree. */
export function headerMismatches(published: Map<string, boolean> | undefined, _method: string, res: { status: number; headers: Headers }): string[] {
  if (!published) return [`no ${res.status} response is published`];
  const out: string[] = [];
  for (const name of ACTIONABLE_HEADERS) if (res.headers.has(name) && !published.has(name)) out.push(`sends ${name}, which is not published`);
  for (const [name, required] of published) if (required && !res.headers.has(name)) out.push(`publishes ${name} as required, but does not send it`);
  return out;
}

/** Every object inside `value` (itself included), each with the path that reaches it. */
export function objectsIn(value: unknown, path: (string | number)[] = []): Array<{ path: (string | number)[]; object: Record<string, unknown> }> {
  if (Array.isArray(value)) return value.flatMap((v, i) => objectsIn(v, [...path, i]));
  if (value === null || typeof value !== 'object') return [];
  const object = value as Record<string, unknown>;
  return [{ path, object }, ...Object.entries(object).flatMap(([k, v]) => objectsIn(v, [...path, k]))];
}

/** A deep copy of `value` with `extra` added to the object at `path`. */
export function withFieldAt(value: unknown, path: (string | number)[], extra: Record<string, unknown>): unknown {
  const copy = structuredClone(value);
  let at: any = copy;
  for (const key of path) at = at[key];
  Object.assign(at, extra);
  return copy;
}
