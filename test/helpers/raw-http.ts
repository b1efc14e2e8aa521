import net from 'node:net';
import http from 'node:http';

export interface RawConnection {
  socket: net.Socket;
  /** Everything the server has sent on it so far. */
  answer(): string;
  /** Resolves when the connection is closed (by either side). */
  closed: Promise<void>;
}

/** A raw TCP connection to an HTTP server, collecting what it answers; rejects when the connection is refused. */
export async function openSocket(baseUrl: string): Promise<RawConnection> {
  const url = new URL(baseUrl);
  const socket = net.connect(Number(url.port), url.hostname);
  let answer = '';
  socket.on('data', (d) => (answer += d));
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', () => resolve());
    socket.once('error', reject);
  });
  socket.on('error', () => {});
  return { socket, answer: () => answer, closed };
}

/**
 * A GET by node:http, not fetch: fetch adds `Cache-Control: no-cache` to a request with If-None-Match
 * (the Fetch standard's cache mode), which makes any server answer it in full. Answers as stack.ts's
 * `api` does (a JSON body parsed when there is one).
 */
export function rawGet(url: string, headers: Record<string, string>): Promise<{ status: number; headers: Headers; text: string; json: any }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers, timeout: 30_000 }, (res) => {
      let text = '';
      res.on('data', (d) => (text += d));
      res.on('end', () => {
        const out = new Headers();
        for (const [name, value] of Object.entries(res.headers)) if (value !== undefined) out.set(name, Array.isArray(value) ? value.join(', ') : value);
        let json: any;
        try {
          json = text ? JSON.parse(text) : undefined;
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode!, headers: out, text, json });
      });
    });
    req.on('timeout', () => req.destroy(new Error('no answer in 30 s')));
    req.on('error', reject);
  });
}
