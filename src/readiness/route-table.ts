import type { Express } from 'express';
import { middlewareKind, type MiddlewareKind } from '../platform/tenancy/auth.middleware.ts';

/** One endpoint of the live app: a route (with its methods) or a mounted sub-application whose routes are opaque. */
export interface Endpoint {
  kind: 'route' | 'mount';
  path: string;
  /** Lower-case HTTP methods; empty for a mount (it may answer any method). */
  methods: string[];
  /** Tagged middleware that runs before the handler: route-level, plus use-level middleware whose path covers it. */
  guards: MiddlewareKind[];
}

interface Layer {
  handle: ((...a: unknown[]) => unknown) & { stack?: Layer[] };
  rawPath?: string | RegExp | Array<string | RegExp>;
  slash?: boolean;
  method?: string;
  route?: { path: string | RegExp; stack: Layer[]; methods: Record<string, boolean> };
}

const pathText = (p: Layer['rawPath']): string => (p === undefined ? '/' : Array.isArray(p) ? p.map(pathText).join('|') : String(p));
const join = (prefix: string, path: string) => (path === '/' ? prefix || '/' : `${prefix.replace(/\/$/, '')}${path}`);
/** Handlers that answer requests for paths of their own: Express's wrapper of a mounted sub-application (`app.use(express())`) and serve-static. */
const ANSWERS_ANY_PATH = new Set(['mounted_app', 'serveStatic']);
/** Whether use-level middleware mounted at `at` runs for requests to `path`. */
export const covers = (at: string, path: string) => at === '/' || path === at || path.startsWith(`${at.replace(/\/$/, '')}/`);

/**
 * Reads the Express 5 router stack of the live app (app.router.stack): routes with their methods and
 * the tagged middleware (MIDDLEWARE_KIND) in front of each. Nested routers are followed; mounted
 * sub-applications and other path-bound middleware (Bull Board, static docs) are reported as opaque mounts.
 */
export function routeTable(app: Express): Endpoint[] {
  const out: Endpoint[] = [];
  walk((app as unknown as { router: { stack: Layer[] } }).router.stack, '', [], out);
  return out;
}

function walk(stack: Layer[], prefix: string, inherited: Array<{ at: string; kind: MiddlewareKind }>, out: Endpoint[]): void {
  const guards = [...inherited];
  for (const layer of stack) {
    const at = join(prefix, layer.slash ? '/' : pathText(layer.rawPath));
    const applying = (path: string) => guards.filter((g) => covers(g.at, path)).map((g) => g.kind);
    if (layer.route) {
      const path = join(prefix, pathText(layer.route.path));
      const own = layer.route.stack.map((l) => middlewareKind(l.handle)).filter((k): k is MiddlewareKind => !!k);
      const methods = Object.keys(layer.route.methods).filter((m) => layer.route!.methods[m]);
      out.push({ kind: 'route', path, methods, guards: [...applying(path), ...own] });
    } else if (Array.isArray(layer.handle.stack)) {
      walk(layer.handle.stack, at === '/' ? prefix : at, guards, out);
    } else if (middlewareKind(layer.handle)) {
      guards.push({ at, kind: middlewareKind(layer.handle)! });
    } else if ((at !== '/' || ANSWERS_ANY_PATH.has(layer.handle.name)) && layer.handle.length < 4) {
      // Middleware on a path of its own (a sub-application, static files) answers requests itself; a
      // sub-application or static directory at the root answers paths this table cannot list: a mount at /.
      out.push({ kind: 'mount', path: at, methods: [], guards: applying(at) });
    }
  }
}

/** A concrete URL for a route template, to probe it: parameters get a well-formed UUID, optional parts are dropped. */
export function samplePath(template: string): string {
  return template
    .replace(/\{[^}]*\}/g, '')
    .replace(/:[A-Za-z0-9_]+/g, '00000000-0000-4000-8000-000000000000')
    .replace(/\*[A-Za-z0-9_]*/g, 'x');
}
