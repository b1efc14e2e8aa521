import type { NextFunction, Request, Response } from 'express';
import type { Logger } from 'pino';
import { NotFoundError } from '../errors/app-error.ts';
import { toProblem } from '../errors/to-problem.ts';

export const PROBLEM_CONTENT_TYPE = 'application/problem+json';

export function sendProblem(res: Response, err: unknown, logger?: Logger): void {
  const { problem, headers } = toProblem(err, res.locals.requestId as string | undefined);
  if (problem.status >= 500 && logger) logger.error({ err, status: problem.status }, 'request failed');
  for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
  res.status(problem.status).type(PROBLEM_CONTENT_TYPE).send(JSON.stringify(problem));
}

export function notFoundHandler(_req: Request, _res: Response, next: NextFunction): void {
  next(new NotFoundError('route'));
}

/** The one error handler: RFC 9457 problem+json, never an internal message or stack. */
export function problemHandler(logger: Logger) {
  return (err: unknown, _req: Request, res: Response, _next: NextFunction): void => {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    sendProblem(res, err, logger);
  };
}
