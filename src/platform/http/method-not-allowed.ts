import type { NextFunction, Request, Response } from 'express';
import { AppError } from '../errors/app-error.ts';

/** A route template (`/api/v1/approvals/:id/decision`) as a whole-path pattern; a parameter is one path segment. */
function templatePattern(path: string): RegExp {
  const escaped = path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replace(/:[A-Za-z_][A-Za-z0-9_]*/g, '[^/]+');
  return new RegExp(`^${escaped}/?$`, 'i');
}

/**
 * Answers a path that exists under another method with 405 and `Allow` (RFC 9110 §15.5.6), instead of
 * the 404 a missing route gets. Mounted after every route, before the not-found handler, so it sees
 * only requests no route answered.
 */
export function methodNotAllowed(routes: ReadonlyArray<{ method: string; path: string }>) {
  const patterns = routes.map((r) => ({ method: r.method.toUpperCase(), pattern: templatePattern(r.path) }));
  return function notAllowed(req: Request, _res: Response, next: NextFunction): void {
    const allowed = new Set(patterns.filter((p) => p.pattern.test(req.path)).map((p) => p.method));
    if (allowed.size === 0) return next();
    if (allowed.has('GET')) allowed.add('HEAD');
    const allow = [...allowed].sort().join(', ');
    next(new AppError('method_not_allowed', 'Method Not Allowed', { status: 405, retryable: false, detail: `This route answers ${allow}.`, headers: { Allow: allow } }));
  };
}
