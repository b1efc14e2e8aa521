import net from 'node:net';

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
