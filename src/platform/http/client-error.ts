import { randomUUID } from 'node:crypto';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { PROBLEM_TYPE_BASE } from '../errors/to-problem.ts';
import { CORRELATION_HEADER } from './correlation.ts';
import { PROBLEM_CONTENT_TYPE } from './problem.middleware.ts';

/** Node's answers to what its HTTP parser refuses, by error code (lib/_http_server.js); anything else is 400. */
const ANSWERS: Record<string, { status: number; reason: string; code: string; detail: string }> = {
  HPE_HEADER_OVERFLOW: {
    status: 431,
    reason: 'Request Header Fields Too Large',
    code: 'headers_too_large',
    detail: 'The request line and headers exceed 16 kB together (a bearer token that large included).',
  },
  HPE_CHUNK_EXTENSIONS_OVERFLOW: { status: 413, reason: 'Content Too Large', code: 'payload_too_large', detail: 'The chunk extensions of the request body are too large.' },
  ERR_HTTP_REQUEST_TIMEOUT: { status: 408, reason: 'Request Timeout', code: 'request_timeout', detail: 'The request did not arrive whole within the time the API allows (API_REQUEST_TIMEOUT).' },
};
const BAD_REQUEST = { status: 400, reason: 'Bad Request', code: 'bad_request', detail: 'The request is not valid HTTP/1.1.' };

/**
 * The server's `clientError` listener: what Node's HTTP parser refuses before Express sees the request
 * (headers over 16 kB, a malformed request line or header, a request not whole within
 * `API_REQUEST_TIMEOUT`) is answered as every error is — problem+json with a stable `code`, an
 * `X-Request-Id` and `X-Correlation-Id` — instead of Node's bare status line, on the same terms as
 * Node's own answer: only while no response of the connection has started, then the connection closes.
 */
export function answerClientError(logger: Logger) {
  return function onClientError(err: NodeJS.ErrnoException, socket: Socket): void {
    const inFlight = (socket as Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage;
    if (err.code === 'ECONNRESET' || !socket.writable || inFlight?.headersSent) {
      socket.destroy();
      return;
    }
    const answer = (err.code && ANSWERS[err.code]) || BAD_REQUEST;
    const requestId = randomUUID();
    const body = JSON.stringify({
      type: `${PROBLEM_TYPE_BASE}${answer.code}`,
      title: answer.reason,
      status: answer.status,
      code: answer.code,
      detail: answer.detail,
      request_id: requestId,
    });
    logger.info({ request_id: requestId, status: answer.status, reason: err.code }, 'request refused by the HTTP parser');
    const head = [
      `HTTP/1.1 ${answer.status} ${answer.reason}`,
      `Content-Type: ${PROBLEM_CONTENT_TYPE}; charset=utf-8`,
      `Content-Length: ${Buffer.byteLength(body)}`,
      `X-Request-Id: ${requestId}`,
      `${CORRELATION_HEADER}: ${randomUUID()}`,
      'Connection: close',
    ];
    socket.end(`${head.join('\r\n')}\r\n\r\n${body}`, () => socket.destroy());
  };
}
