import { connect, createServer, type Socket } from 'node:net';

export interface HeldProxy {
  /** The proxy's URL, with `target`'s scheme (redis://127.0.0.1:<port>). */
  url: string;
  /** Connections accepted so far. */
  accepted(): number;
  /**
   * Resolves with the name the first connection whose CLIENT SETNAME starts with `prefix` gives itself
   * (ioredis sends it, with HELLO, as soon as its connection is made: before any answer): who has
   * connected, seen as it arrives here — not in the client's own log, which may come out later.
   */
  named(prefix: string): Promise<string>;
  /** Lets every held connection through to the target, and every later one at once. */
  release(): void;
  close(): Promise<void>;
}

/** A CLIENT SETNAME as a RESP client sends it (ioredis: lower case; any case matched). */
const SETNAME = /\*3\r\n\$6\r\nclient\r\n\$7\r\nsetname\r\n\$\d+\r\n([^\r]*)\r\n/gi;
/** How much of a connection's first bytes are searched for its name (its HELLO and CLIENT SETNAME come first). */
const NAME_WITHIN = 4096;

/**
 * A TCP proxy in front of `target` (a redis:// URL) that accepts connections but holds them — answers
 * nothing and opens nothing to the target — until `release()`: a client sees its connection made
 * (ioredis: `connect`, its HELLO and ready check unanswered), as against a Redis that is up but has not
 * answered yet, not one that is down (refused). What a held client sends is kept (and read, to tell
 * who connected: `named`), then sent on to the target, in order, when it is released. A test holds a
 * process's start at its wait for Redis, signals it there, then lets Redis answer.
 */
export async function heldProxy(target: string): Promise<HeldProxy> {
  const { hostname, port, protocol } = new URL(target);
  let released = false;
  let count = 0;
  const held: Array<() => void> = [];
  const sockets = new Set<Socket>();
  const names: string[] = [];
  const waiting = new Set<{ prefix: string; resolve: (name: string) => void }>();
  const named = (name: string) => {
    names.push(name);
    for (const w of waiting) {
      if (!name.startsWith(w.prefix)) continue;
      waiting.delete(w);
      w.resolve(name);
    }
  };
  const server = createServer((client) => {
    count++;
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    // A client that resets its connection while held: gone, as it would be from Redis.
    client.on('error', () => client.destroy());
    // Its first bytes read for its name, whether held or not.
    let head = '';
    const readName = (chunk: Buffer) => {
      const before = head.length;
      head += chunk.toString('latin1');
      for (const m of head.matchAll(SETNAME)) if (m.index + m[0].length > before) named(m[1]!);
      if (head.length >= NAME_WITHIN) client.off('data', readName);
    };
    client.on('data', readName);
    // Read, not paused; what it sends while held is kept, and sent on first.
    const kept: Buffer[] = [];
    const keep = (chunk: Buffer) => kept.push(chunk);
    client.on('data', keep);
    const pass = () => {
      client.off('data', keep);
      joinUpstream(client, hostname, Number(port), sockets, Buffer.concat(kept.splice(0)));
    };
    if (released) pass();
    else held.push(() => (client.destroyed ? undefined : pass()));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address() as { port: number };
  return {
    url: `${protocol}//127.0.0.1:${address.port}`,
    accepted: () => count,
    named: (prefix) => {
      const seen = names.find((n) => n.startsWith(prefix));
      return seen !== undefined ? Promise.resolve(seen) : new Promise((resolve) => waiting.add({ prefix, resolve }));
    },
    release() {
      released = true;
      for (const pass of held.splice(0)) pass();
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * Connects `client` to host:port and pipes both ways, `first` (what the client sent before) ahead of the
 * rest; either end closing closes both. Returns the upstream socket.
 */
function joinUpstream(client: Socket, hostname: string, port: number, sockets: Set<Socket>, first?: Buffer): Socket {
  const upstream = connect(port, hostname);
  sockets.add(upstream);
  if (first?.length) upstream.write(first);
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
