/**
 * A SQL text with its literal values replaced by `?`: quoted strings (`'…'`, `E'…'`, with doubled
 * quotes inside), dollar-quoted bodies and numbers outside identifiers. What a span may show of a
 * statement: its shape, never the tenant data the platform writes into some statements' text.
 */
export function statementWithoutValues(text: string | undefined): string {
  if (!text) return '';
  return text
    .replace(/\$([A-Za-z_]*)\$[\s\S]*?\$\1\$/g, '?')
    .replace(/[Ee]?'(?:[^']|'')*'/g, '?')
    .replace(/(?<![A-Za-z0-9_$."])-?\b\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b/g, '?')
    .slice(0, 4000);
}
