import { connect, createServer, type Socket } from 'node:net';

export interface HeldProxy {
  /** The proxy's URL, with `target`'s scheme (redis://127.0.0.1:<port>). */
  url: string;
  /** Connections accepted so far. */
  accepted(): number;
  /** Lets every held connection through to the target, and every later one at once. */
  release(): void;
  close(): Promise<void>;
}

/**
 * A TCP proxy in front of `target` (a redis:// URL) that accepts connections but holds them — reads
 * nothing from the client and opens nothing to the target — until `release()`: a client sees its
 * connection made (ioredis: `connect`, its ready check unanswered), as against a Redis that is up but
 * has not answered yet, not one that is down (refused). A test holds a process's start at its wait
 * for Redis, signals it there, then lets Redis answer.
 */
export async function heldProxy(target: string): Promise<HeldProxy> {
  const { hostname, port, protocol } = new URL(target);
  let released = false;
  let count = 0;
  const held: Socket[] = [];
  const sockets = new Set<Socket>();
  const pass = (client: Socket) => {
    const upstream = connect(Number(port), hostname);
    sockets.add(upstream);
    upstream.on('close', () => sockets.delete(upstream));
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    client.pipe(upstream);
    upstream.pipe(client);
    client.resume();
  };
  const server = createServer({ pauseOnConnect: true }, (client) => {
    count++;
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    if (released) pass(client);
    else held.push(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address() as { port: number };
  return {
    url: `${protocol}//127.0.0.1:${address.port}`,
    accepted: () => count,
    release() {
      released = true;
      for (const client of held.splice(0)) if (!client.destroyed) pass(client);
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
