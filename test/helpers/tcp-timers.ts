import { existsSync, readFileSync } from 'node:fs';

/**
 * The kernel's timer column (`tr`) of this machine's TCP sockets whose local or remote port is
 * `port` (/proc/net/tcp, Linux): `2` on an idle established socket means its keepalive timer is
 * armed (SO_KEEPALIVE; without it the column reads `0` once the socket is idle, `1` while data is
 * unacknowledged). Node does not expose whether a socket has keepalive on; the kernel does. IPv6
 * sockets (a connection over ::1: a host `localhost` that resolves to it first) are in
 * /proc/net/tcp6, of the same columns (an address is hex without colons, then `:port`).
 */
export function tcpTimers(port: number, side: 'local' | 'remote'): number[] {
  return ['/proc/net/tcp', '/proc/net/tcp6']
    .flatMap((table) => (existsSync(table) ? readFileSync(table, 'utf8').split('\n').slice(1) : []))
    .map((line) => line.trim().split(/\s+/))
    .filter((f) => f.length > 5 && f[3] === '01' && parseInt(f[side === 'local' ? 1 : 2]!.split(':')[1]!, 16) === port)
    .map((f) => parseInt(f[5]!.split(':')[0]!, 16));
}

/** The keepalive timer's code in tcpTimers. */
export const KEEPALIVE_TIMER = 2;
