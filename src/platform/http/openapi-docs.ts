/**
 * A readable, self-contained HTML page for an OpenAPI 3.1 document: no scripts, no CDN (the docs must
 * work offline and under a strict CSP). Each operation lists its parameters, body and responses, with
 * schemas shown as JSON; `$ref`s are resolved against components.schemas (and components.responses) for display.
 */
type Json = Record<string, any>;

const esc = (s: unknown) =>
  String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

function resolve(doc: Json, schema: unknown, depth = 0): unknown {
  if (!schema || typeof schema !== 'object' || depth > 8) return schema;
  if (Array.isArray(schema)) return schema.map((s) => resolve(doc, s, depth + 1));
  const ref = (schema as Json).$ref as string | undefined;
  if (ref?.startsWith('#/components/schemas/')) return resolve(doc, doc.components?.schemas?.[ref.slice(21)], depth + 1);
  return Object.fromEntries(Object.entries(schema).map(([k, v]) => [k, resolve(doc, v, depth + 1)]));
}

const schemaBlock = (doc: Json, schema: unknown) => `<details><summary>schema</summary><pre>${esc(JSON.stringify(resolve(doc, schema), null, 2))}</pre></details>`;

function operation(doc: Json, path: string, method: string, op: Json): string {
  const params = (op.parameters ?? []) as Json[];
  const body = op.requestBody?.content as Json | undefined;
  // A response may be a reference to components.responses (the refusals common to every operation).
  const responses = Object.entries((op.responses ?? {}) as Json).map(([code, r]) => {
    const ref = (r as Json).$ref as string | undefined;
    return [code, ref?.startsWith('#/components/responses/') ? (doc.components?.responses?.[ref.slice(23)] ?? r) : r] as const;
  });
  return `<section class="op" id="${esc(op.operationId ?? `${method}${path}`)}">
  <h3><span class="m m-${esc(method)}">${esc(method.toUpperCase())}</span> <code>${esc(path)}</code></h3>
  <p>${esc(op.summary)}</p>
  ${op.security?.length ? '<p class="note">Requires a bearer JWT.</p>' : '<p class="note">Public.</p>'}
  ${
    params.length
      ? `<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>required</th><th>description</th></tr>${params
          .map((p) => `<tr><td><code>${esc(p.name)}</code></td><td>${esc(p.in)}</td><td>${p.required ? 'yes' : 'no'}</td><td>${esc(p.description ?? p.schema?.description ?? '')}</td></tr>`)
          .join('')}</table>`
      : ''
  }
  ${body ? `<h4>Request body</h4>${Object.entries(body).map(([type, media]) => `<p><code>${esc(type)}</code></p>${schemaBlock(doc, (media as Json).schema)}`).join('')}` : ''}
  <h4>Responses</h4>
  <table><tr><th>status</th><th>description</th><th>body</th></tr>${responses
    .map(([code, r]) => {
      const content = Object.entries(((r as Json).content ?? {}) as Json);
      return `<tr class="${Number(code) >= 400 ? 'err' : 'ok'}"><td>${esc(code)}</td><td>${esc((r as Json).description)}</td><td>${content
        .map(([type, media]) => `<code>${esc(type)}</code>${schemaBlock(doc, (media as Json).schema)}`)
        .join('')}</td></tr>`;
    })
    .join('')}</table>
</section>`;
}

export function renderOpenApiHtml(doc: Json): string {
  const ops: string[] = [];
  const toc: string[] = [];
  for (const [path, item] of Object.entries((doc.paths ?? {}) as Json)) {
    for (const [method, op] of Object.entries(item as Json)) {
      if (!['get', 'post', 'put', 'patch', 'delete'].includes(method)) continue;
      ops.push(operation(doc, path, method, op as Json));
      toc.push(`<li><a href="#${esc((op as Json).operationId ?? `${method}${path}`)}"><span class="m m-${esc(method)}">${esc(method.toUpperCase())}</span> ${esc(path)}</a></li>`);
    }
  }
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(doc.info?.title)} — API reference</title>
<style>
body{font:15px/1.5 system-ui,sans-serif;margin:0;color:#1d2330;background:#f7f8fa}
header{background:#1d2330;color:#fff;padding:1.2rem 2rem}header p{margin:.3rem 0 0;color:#c8cdd8}
main{display:grid;grid-template-columns:20rem 1fr;gap:1.5rem;padding:1.5rem 2rem}
nav ul{list-style:none;padding:0;margin:0;position:sticky;top:1rem}nav li{margin:.2rem 0}nav a{text-decoration:none;color:#1d2330;font-size:.85rem}
.op{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:1rem 1.2rem;margin-bottom:1.2rem}
.op h3{margin:0 0 .4rem}.note{color:#5b6478;font-size:.85rem}
.m{display:inline-block;min-width:3.6rem;text-align:center;border-radius:4px;color:#fff;font-size:.75rem;padding:.1rem .3rem;font-weight:600}
.m-get{background:#2f7d4f}.m-post{background:#2a5db0}.m-put,.m-patch{background:#a06a12}.m-delete{background:#b03a2a}
table{border-collapse:collapse;width:100%;font-size:.85rem}td,th{border-top:1px solid #e5e8ee;padding:.35rem .5rem;text-align:left;vertical-align:top}
tr.err td:first-child{color:#b03a2a;font-weight:600}tr.ok td:first-child{color:#2f7d4f;font-weight:600}
pre{background:#f2f4f7;padding:.6rem;border-radius:6px;overflow:auto;max-height:28rem;font-size:.8rem}
</style></head>
<body><header><h1>${esc(doc.info?.title)} <small>${esc(doc.info?.version)}</small></h1><p>${esc(doc.info?.description)}</p>
<p>Machine-readable: <a style="color:#9cc3ff" href="/openapi.json">/openapi.json</a> (OpenAPI ${esc(doc.openapi)})</p></header>
<main><nav><ul>${toc.join('')}</ul></nav><div>${ops.join('\n')}</div></main></body></html>`;
}
