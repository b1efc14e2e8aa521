import { AppError, isConnectivityError, isDatabaseTimeout } from './app-error.ts';

/** RFC 9457 problem details. */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail?: string;
  instance?: string;
  code: string;
  request_id?: string;
  [extension: string]: unknown;
}

export const PROBLEM_TYPE_BASE = 'https://docs.dealix.dev/problems/';

/** RFC 9110 reason phrases of the client errors body-parser raises (its 413 and 415 are not "Bad Request"). */
const CLIENT_ERROR_TITLES: Record<number, string> = { 413: 'Content Too Large', 415: 'Unsupported Media Type' };

/** Maps any error to a problem body and headers. Internal messages never leave the process. */
export function toProblem(err: unknown, requestId?: string): { problem: Problem; headers: Record<string, string> } {
  if (err instanceof AppError) {
    const problem: Problem = {
      type: `${PROBLEM_TYPE_BASE}${err.code}`,
      title: err.message,
      status: err.status,
      code: err.code,
      ...(err.detail ? { detail: err.detail } : {}),
      ...err.extensions,
      ...(requestId ? { request_id: requestId } : {}),
    };
    return { problem, headers: err.headers };
  }
  const httpish = err as { status?: unknown; statusCode?: unknown; type?: unknown; expose?: unknown };
  const status = typeof httpish.status === 'number' ? httpish.status : typeof httpish.statusCode === 'number' ? httpish.statusCode : 0;
  // body-parser / http-errors style errors raised before our handlers run.
  if (status >= 400 && status < 500) {
    const code =
      // Too many form fields (the dashboard's sign-in form: urlencoded's parameterLimit) is body-parser's 413 too.
      httpish.type === 'entity.too.large' || httpish.type === 'parameters.too.many'
        ? 'payload_too_large'
        : httpish.type === 'entity.parse.failed'
          ? 'malformed_json'
          : httpish.type === 'encoding.unsupported' || httpish.type === 'charset.unsupported'
            ? 'unsupported_encoding'
            : 'bad_request';
    const detail =
      code === 'payload_too_large'
        ? httpish.type === 'parameters.too.many'
          ? 'The request body has more fields than this form takes.'
          : 'The request body is larger than the limit.'
        : code === 'malformed_json'
          ? isBareJsonValue((err as { body?: unknown }).body)
            ? 'The request body must be a JSON object: a bare JSON value (null, a number, a string) is not accepted.'
            : 'The request body is not valid JSON.'
          : code === 'unsupported_encoding'
            ? 'The request body encoding or charset is not supported.'
            : 'The request could not be understood.';
    return {
      problem: { type: `${PROBLEM_TYPE_BASE}${code}`, title: CLIENT_ERROR_TITLES[status] ?? 'Bad Request', status, code, detail, ...(requestId ? { request_id: requestId } : {}) },
      headers: {},
    };
  }
  // Waited out DATABASE_STATEMENT_TIMEOUT (or a lock timeout): busy, not broken — the transaction
  // rolled back, so nothing of the request is stored, and the retry may well go through.
  if (isDatabaseTimeout(err)) return unavailable('database_timeout', 'The request waited too long for the database (a lock held by other work, or a statement timeout); nothing was changed. Retry later.', '2', requestId);
  if (isConnectivityError(err)) return unavailable('service_unavailable', 'A backing service is temporarily unavailable. Retry later.', '5', requestId);
  return {
    problem: {
      type: `${PROBLEM_TYPE_BASE}internal`,
      title: 'Internal Server Error',
      status: 500,
      code: 'internal',
      detail: 'An unexpected error occurred. Quote the request id when reporting it.',
      ...(requestId ? { request_id: requestId } : {}),
    },
    headers: {},
  };
}

/** A 503: not now, retry after `retryAfter` seconds (the key is released, never stored). */
function unavailable(code: string, detail: string, retryAfter: string, requestId?: string): { problem: Problem; headers: Record<string, string> } {
  return {
    problem: { type: `${PROBLEM_TYPE_BASE}${code}`, title: 'Service Unavailable', status: 503, code, detail, ...(requestId ? { request_id: requestId } : {}) },
    headers: { 'Retry-After': retryAfter },
  };
}

/** True for the text of a JSON value that is not an object or array (body-parser's strict mode refuses it). */
function isBareJsonValue(body: unknown): boolean {
  if (typeof body !== 'string') return false;
  try {
    const v: unknown = JSON.parse(body);
    return v === null || typeof v !== 'object';
  } catch {
    return false;
  }
}
