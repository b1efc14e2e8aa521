/**
 * The value of one Prometheus series in a /metrics text, by its name and labels in any order
 * (prom-client's label order is not part of its contract); undefined while the series does not exist.
 */
export function series(text: string, name: string, labels: Record<string, string>): number | undefined {
  const wanted = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)\{(.*)\} (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have: string[] = m[2]!.match(/\w+="(?:[^"\\]|\\.)*"/g) ?? [];
    if (have.length === wanted.length && wanted.every((w) => have.includes(w))) return Number(m[3]);
  }
  return undefined;
}

/** dealix_requests_refused_total for one reason and route (`POST /api/v1/golden-path/run`). */
export const refusedOf = (text: string, reason: string, route: string): number | undefined => series(text, 'dealix_requests_refused_total', { reason, route });
