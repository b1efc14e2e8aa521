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
    joinUpstream(client, hostname, Number(port), sockets);
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

/** Connects `client` to host:port and pipes both ways; either end closing closes both. Returns the upstream socket. */
function joinUpstream(client: Socket, hostname: string, port: number, sockets: Set<Socket>): Socket {
  const upstream = connect(port, hostname);
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
  return upstream;
}

export interface PausableProxy {
  /** The proxy's URL, with `target`'s scheme. */
  url: string;
  /** Stops forwarding, both ways, on every connection, now and later: as a network that stops delivering while the process keeps running. */
  pause(): void;
  /**
   * Stops forwarding, both ways, on the connections open now only; later ones are forwarded: as a
   * network that lost those connections (a NAT or firewall entry gone) while the server still takes new ones.
   */
  pauseOpen(): void;
  /**
   * Holds the connections opened from now on (accepted, nothing forwarded) until `resume()`; the open
   * ones keep forwarding: as a server that is there but slow to take a new connection (a fork or an
   * authentication under load).
   */
  holdNew(): void;
  /** When the first connection `holdNew` held was opened (epoch ms), if one was. */
  readonly heldSince: number | undefined;
  /** Forwards again, both ways, on every connection still open: what was sent meanwhile arrives then (as a network that delivers again). */
  resume(): void;
  /** Closes every connection (as the kernel closes a dead process's sockets) and the proxy. */
  close(): Promise<void>;
}

/** A TCP proxy in front of `target` (a redis:// or postgres:// URL) that forwards until `pause()`, and again after `resume()`. */
export async function pausableProxy(target: string): Promise<PausableProxy> {
  const { hostname, port, protocol } = new URL(target);
  const sockets = new Set<Socket>();
  const pairs: Array<[Socket, Socket]> = [];
  let paused = false;
  let holdingNew = false;
  let heldSince: number | undefined;
  const server = createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    const upstream = joinUpstream(client, hostname, Number(port), sockets);
    pairs.push([client, upstream]);
    if (holdingNew) heldSince ??= Date.now();
    if (paused || holdingNew) for (const s of [client, upstream]) s.pause();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  let closed: Promise<void> | undefined;
  return {
    url: `${protocol}//127.0.0.1:${(server.address() as { port: number }).port}`,
    pause() {
      paused = true;
      for (const pair of pairs) for (const s of pair) s.pause();
    },
    pauseOpen() {
      for (const pair of pairs) for (const s of pair) s.pause();
    },
    holdNew() {
      holdingNew = true;
    },
    get heldSince() {
      return heldSince;
    },
    resume() {
      paused = false;
      holdingNew = false;
      for (const pair of pairs) for (const s of pair) if (!s.destroyed) s.resume();
    },
    close() {
      closed ??= new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      });
      return closed;
    },
  };
}
