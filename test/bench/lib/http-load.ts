import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { nowMs, sleep } from './stats.ts';

export const GOLDEN_PATH_POST = '/api/v1/golden-path/run';
/** The same POST declared with idempotency 'optional' (bench-api.ts adds it); sent without a key. */
export const NO_KEY_POST = '/api/v1/bench/golden-path/run-without-idempotency';

export interface PostResult {
  status: number;
  runId: string;
  ms: number;
  /** When the request was sent (nowMs). */
  sentAt: number;
}

/** A small keep-alive HTTP client: lighter than fetch, so the load generator disturbs the API less. */
export class ApiClient {
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 512 });
  private readonly port: number;
  constructor(port: number) {
    this.port = port;
  }

  post(path: string, token: string, body: unknown, idempotencyKey: string | null = randomUUID(), opts: { allowErrors?: boolean } = {}): Promise<PostResult> {
    const payload = JSON.stringify(body);
    const headers: Record<string, string | number> = {
      authorization: `Bearer ${token}`,
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(payload),
    };
    if (idempotencyKey) headers['idempotency-key'] = idempotencyKey;
    const sentAt = nowMs();
    return new Promise((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port: this.port, path, method: 'POST', headers, agent: this.agent }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (text += d));
        res.on('end', () => {
          const ms = nowMs() - sentAt;
          let runId = '';
          try {
            runId = (JSON.parse(text) as { run_id?: string }).run_id ?? '';
          } catch {
            // not JSON: reported through the status
          }
          if (res.statusCode !== 202 && !opts.allowErrors) reject(new Error(`POST ${path}: ${res.statusCode} ${text.slice(0, 300)}`));
          else resolve({ status: res.statusCode ?? 0, runId, ms, sentAt });
        });
      });
      req.on('error', (e) => (opts.allowErrors ? resolve({ status: 0, runId: '', ms: nowMs() - sentAt, sentAt }) : reject(e)));
      req.end(payload);
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

/**
 * Open loop: fires `fire(i)` at a fixed rate for `seconds`, whatever the answers' latency (a closed loop
 * would slow down with the server and hide its queueing). Returns every request's result.
 */
export async function openLoop<T>(opts: { rate: number; seconds: number; fire(i: number): Promise<T> }): Promise<T[]> {
  const total = Math.round(opts.rate * opts.seconds);
  const interval = 1000 / opts.rate;
  const started = nowMs();
  const pending: Promise<T>[] = [];
  for (let i = 0; i < total; i++) {
    const due = started + i * interval;
    const wait = due - nowMs();
    if (wait > 1) await sleep(wait);
    pending.push(opts.fire(i));
  }
  return Promise.all(pending);
}
