/**
 * A real DNS server for tests: a node:dgram UDP socket on 127.0.0.1 answering A and AAAA queries from a
 * table the test sets, so the platform's resolver (WEBHOOK_DNS_SERVERS, or HostResolver's `servers`) asks
 * it over the wire as it would ask any name server. A name may answer, be held (its queries answered only
 * once `release` is called), fail (SERVFAIL), or be silent (never answered: an authoritative server that
 * does not respond).
 * Any other name is NXDOMAIN.
 */
import { createSocket, type RemoteInfo } from 'node:dgram';
import ipaddr from 'ipaddr.js';

const A = 1;
const AAAA = 28;
const SERVFAIL = 2;
const NXDOMAIN = 3;

interface Records {
  a?: string[];
  aaaa?: string[];
}

type Mode =
  | { kind: 'answer'; records: Records; silent?: 'A' | 'AAAA'; first?: { type: 'A' | 'AAAA'; answered: boolean; later: { msg: Buffer; peer: RemoteInfo }[] } } | { kind: 'silent' } | { kind: 'servfail' } | { kind: 'held'; records: Records; waiting: { msg: Buffer; peer: RemoteInfo }[] };

/** The name and type of a query (its question's end offset), or undefined for a message that is not one. */
function question(msg: Buffer): { name: string; type: number; end: number } | undefined {
  if (msg.length < 12 || msg.readUInt16BE(4) < 1) return undefined;
  const labels: string[] = [];
  let at = 12;
  for (;;) {
    const len = msg[at];
    if (len === undefined || len > 63) return undefined;
    at += 1;
    if (len === 0) break;
    labels.push(msg.toString('latin1', at, at + len));
    at += len;
  }
  if (at + 4 > msg.length) return undefined;
  return { name: labels.join('.').toLowerCase(), type: msg.readUInt16BE(at), end: at + 4 };
}

/** The answer to `msg`: its id and question echoed, `addresses` as records of the asked type (none: NODATA), or NXDOMAIN. */
function answer(msg: Buffer, q: { type: number; end: number }, records: Records | undefined, rcode = records ? 0 : NXDOMAIN): Buffer {
  const addresses = !records ? [] : q.type === A ? (records.a ?? []) : q.type === AAAA ? (records.aaaa ?? []) : [];
  const header = Buffer.alloc(12);
  msg.copy(header, 0, 0, 2);
  // QR, the query's opcode and RD, AA, RA; rcode NOERROR or NXDOMAIN.
  header.writeUInt16BE(0x8000 | (msg.readUInt16BE(2) & 0x7900) | 0x0400 | 0x0080 | rcode, 2);
  header.writeUInt16BE(1, 4);
  header.writeUInt16BE(addresses.length, 6);
  const rrs = addresses.map((address) => {
    const data = Buffer.from(ipaddr.parse(address).toByteArray());
    const rr = Buffer.alloc(12);
    rr.writeUInt16BE(0xc00c, 0); // the question's name
    rr.writeUInt16BE(q.type, 2);
    rr.writeUInt16BE(1, 4); // IN
    rr.writeUInt32BE(60, 6);
    rr.writeUInt16BE(data.length, 10);
    return Buffer.concat([rr, data]);
  });
  return Buffer.concat([header, msg.subarray(12, q.end), ...rrs]);
}

export async function startDnsServer() {
  const names = new Map<string, Mode>();
  const queries: { name: string; type: 'A' | 'AAAA' | number }[] = [];
  const socket = createSocket('udp4');
  socket.on('message', (msg, peer) => {
    const q = question(msg);
    if (!q) return;
    queries.push({ name: q.name, type: q.type === A ? 'A' : q.type === AAAA ? 'AAAA' : q.type });
    const mode = names.get(q.name);
    if (mode?.kind === 'silent') return;
    if (mode?.kind === 'answer' && mode.silent && (mode.silent === 'A' ? A : AAAA) === q.type) return;
    if (mode?.kind === 'held') return void mode.waiting.push({ msg, peer });
    if (mode?.kind === 'answer' && mode.first) {
      const { first } = mode;
      // The other type's query waits until the first type's has been answered, then is answered after it.
      if ((first.type === 'A' ? A : AAAA) !== q.type) {
        if (!first.answered) return void first.later.push({ msg, peer });
      } else {
        socket.send(answer(msg, q, mode.records), peer.port, peer.address);
        first.answered = true;
        for (const { msg: m, peer: p } of first.later.splice(0)) socket.send(answer(m, question(m)!, mode.records), p.port, p.address);
        return;
      }
    }
    if (mode?.kind === 'servfail') return void socket.send(answer(msg, q, {}, SERVFAIL), peer.port, peer.address);
    socket.send(answer(msg, q, mode?.records), peer.port, peer.address);
  });
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
  const server = `127.0.0.1:${socket.address().port}`;
  return {
    /** `ip:port`, as WEBHOOK_DNS_SERVERS takes it. */
    server,
    /** Every query received, in order. */
    queries,
    /** `name` answers these addresses (an empty family: no records of that type). */
    answer: (name: string, records: Records) => void names.set(name.toLowerCase(), { kind: 'answer', records }),
    /**
     * `name` answers these addresses, its `first` type's query always before the other's: the other's answer is sent
     * only after the first's (held until that query comes). A resolver then has the first family's answer when, or
     * before, it has the other's however late it reads them — e.g. a private AAAA record that must be seen with the
     * public A one, which the resolver would not wait for longer than its resolution delay (resolve.ts).
     */
    answerFirst: (name: string, records: Records, first: 'A' | 'AAAA') => void names.set(name.toLowerCase(), { kind: 'answer', records, first: { type: first, answered: false, later: [] } }),
    /** `name`'s queries of type `silent` are never answered, the other type's are with `records` (a server that drops AAAA queries). */
    answerOnly: (name: string, records: Records, silent: 'A' | 'AAAA') => void names.set(name.toLowerCase(), { kind: 'answer', records, silent }),
    /** `name`'s queries are never answered. */
    silence: (name: string) => void names.set(name.toLowerCase(), { kind: 'silent' }),
    /** `name`'s queries are answered SERVFAIL (the server failed: says nothing of the name). */
    servfail: (name: string) => void names.set(name.toLowerCase(), { kind: 'servfail' }),
    /** `name`'s queries wait until `release(name)`, which answers them (and later ones) with `records`. */
    hold: (name: string, records: Records) => void names.set(name.toLowerCase(), { kind: 'held', records, waiting: [] }),
    release(name: string) {
      const mode = names.get(name.toLowerCase());
      if (mode?.kind !== 'held') return;
      names.set(name.toLowerCase(), { kind: 'answer', records: mode.records });
      for (const { msg, peer } of mode.waiting) socket.send(answer(msg, question(msg)!, mode.records), peer.port, peer.address);
    },
    /** Whether `name` has been asked about. */
    asked: (name: string) => queries.some((q) => q.name === name.toLowerCase()),
    close: () => new Promise<void>((resolve) => socket.close(() => resolve())),
  };
}

export type TestDns = Awaited<ReturnType<typeof startDnsServer>>;
