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

  /** The published schema of `method path` answering `status` with `contentType`; undefined if the document has none. */
  function validator(method: string, path: string, status: number, contentType: string): ValidateFunction | undefined {
    const schema = doc.paths?.[openApiPath(path)]?.[method.toLowerCase()]?.responses?.[String(status)]?.content?.[contentType]?.schema;
    if (!schema) return undefined;
    let v = compiled.get(schema);
    if (!v) {
      v = ajv.compile({ ...schema, components: doc.components });
      compiled.set(schema, v);
    }
    return v;
  }

  /** Why `body` does not match (Ajv's errors), or [] when it does. */
  function errors(v: ValidateFunction, body: unknown): unknown[] {
    return v(body) ? [] : [...(v.errors ?? [])];
  }

  return { validator, errors };
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
