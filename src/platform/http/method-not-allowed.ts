import type { NextFunction, Request, Response } from 'express';
import type { ZodType } from 'zod';
import { AppError } from '../errors/app-error.ts';

/** What method-not-allowed needs of a route declaration (RouteDef). */
export interface RouteShape {
  method: string;
  path: string;
  params?: ZodType | undefined;
}

/**
 * A route template (`/api/v1/approvals/:id/decision`) as a whole-path pattern, case-insensitive as
 * Express matches, with one capture per parameter (a parameter is one path segment), in `names` order.
 */
export function routeTemplate(path: string): { names: string[]; re: RegExp } {
  const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return {
    names: [...path.matchAll(/:([A-Za-z_][A-Za-z0-9_]*)/g)].map((m) => m[1]!),
    re: new RegExp(`^${path.split(/:[A-Za-z_][A-Za-z0-9_]*/).map(escape).join('([^/]+)')}/?$`, 'i'),
  };
}

type Compiled = RouteShape & { names: string[]; re: RegExp };

/**
 * Whether `path` names this route: its template matches and its path parameters are valid. A literal
 * segment of another route is no path id: `…/runs/cancel` (POST) is not the run `cancel` of
 * `GET …/runs/:id`, so that path exists under POST only.
 */
function namesRoute(route: Compiled, path: string): boolean {
  const values = route.re.exec(path)?.slice(1);
  if (!values) return false;
  if (!route.params) return true;
  try {
    return route.params.safeParse(Object.fromEntries(route.names.map((n, i) => [n, decodeURIComponent(values[i]!)]))).success;
  } catch {
    return false; // not valid percent-encoding: no valid parameter
  }
}

/**
 * The routes `path` is one of: those that name it (valid path parameters) or, when none does, every
 * route whose template matches it — the route exists, and its path id is validated later (404
 * `validation_failed`), so `PUT …/runs/not-a-uuid` is 405 `Allow: GET, HEAD` as for a valid id.
 */
function routesOf(routes: readonly Compiled[], path: string): Compiled[] {
  const matching = routes.filter((r) => r.re.test(path));
  const named = matching.filter((r) => namesRoute(r, path));
  return named.length > 0 ? named : matching;
}

/** The methods of the routes `path` is one of (`GET` with `HEAD`), sorted: the `Allow` of a 405. */
function allowed(routes: readonly Compiled[], path: string): string[] {
  const methods = new Set(routesOf(routes, path).map((r) => r.method.toUpperCase()));
  if (methods.has('GET')) methods.add('HEAD');
  return [...methods].sort();
}

/** Whether `raw` is valid percent-encoded UTF-8. */
export function decodes(raw: string): boolean {
  try {
    decodeURIComponent(raw);
    return true;
  } catch {
    return false;
  }
}

function compile(routes: ReadonlyArray<RouteShape>): Compiled[] {
  return routes.map((r) => ({ ...r, ...routeTemplate(r.path) }));
}

const notAllowedError = (allow: string) =>
  new AppError('method_not_allowed', 'Method Not Allowed', { status: 405, retryable: false, detail: `This route answers ${allow}.`, headers: { Allow: allow } });

/**
 * Answers a path that exists under another method with 405 and `Allow` (RFC 9110 §15.5.6), instead of
 * the 404 a missing route gets. Mounted after every route, before the not-found handler, so it sees
 * only requests no route answered.
 */
export function methodNotAllowed(routes: ReadonlyArray<RouteShape>) {
  const compiled = compile(routes);
  return function notAllowed(req: Request, _res: Response, next: NextFunction): void {
    const allow = allowed(compiled, req.path);
    if (allow.length === 0) return next();
    next(notAllowedError(allow.join(', ')));
  };
}

/**
 * First in the chain of a route with path parameters: when the parameters are invalid but the path
 * names another route (`GET …/runs/cancel`, where `cancel` is the literal of `POST …/runs/cancel`),
 * the request is passed on (`next('route')`) to the routes after it and so to {@link methodNotAllowed}
 * (405 with `Allow`), before the token is read, as for any path that exists under other methods only.
 * Invalid parameters that name no other route go on to this route's own 404 `validation_failed`.
 */
export function literalSegmentGuards(routes: ReadonlyArray<RouteShape>): (route: RouteShape) => (req: Request, res: Response, next: NextFunction) => void {
  const compiled = compile(routes);
  return (route) => {
    const own = compile([route])[0]!;
    return function literalSegment(req: Request, _res: Response, next: NextFunction): void {
      if (namesRoute(own, req.path) || !compiled.some((r) => namesRoute(r, req.path))) return next();
      next('route');
    };
  };
}

/**
 * Answers `OPTIONS` on a route's path with 204 and the `Allow` a 405 would give (Express's own answer
 * listed the methods of every template the path matched, `GET` for `…/runs/cancel` included). A path no
 * route has goes on (404), and so does one that is not valid percent-encoding (the router's 404
 * `validation_failed`, as under any method). Mounted before the routes.
 */
export function optionsAllow(routes: ReadonlyArray<RouteShape>) {
  const compiled = compile(routes);
  return function options(req: Request, res: Response, next: NextFunction): void {
    if (req.method !== 'OPTIONS' || !decodes(req.path)) return next();
    const allow = allowed(compiled, req.path);
    if (allow.length === 0) return next();
    res.setHeader('Allow', allow.join(', '));
    res.status(204).end();
  };
}
