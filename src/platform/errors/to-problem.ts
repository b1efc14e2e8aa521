import { AppError, isConnectivityError } from './app-error.ts';

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
      httpish.type === 'entity.too.large'
        ? 'payload_too_large'
        : httpish.type === 'entity.parse.failed'
          ? 'malformed_json'
          : httpish.type === 'encoding.unsupported' || httpish.type === 'charset.unsupported'
            ? 'unsupported_encoding'
            : 'bad_request';
    const detail =
      code === 'payload_too_large'
        ? 'The request body is larger than the limit.'
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
  if (isConnectivityError(err)) {
    return {
      problem: {
        type: `${PROBLEM_TYPE_BASE}service_unavailable`,
        title: 'Service Unavailable',
        status: 503,
        code: 'service_unavailable',
        detail: 'A backing service is temporarily unavailable. Retry later.',
        ...(requestId ? { request_id: requestId } : {}),
      },
      headers: { 'Retry-After': '5' },
    };
  }
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
