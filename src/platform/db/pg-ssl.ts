import { readFileSync } from 'node:fs';
import { checkServerIdentity, type ConnectionOptions } from 'node:tls';

export type SslMode = 'disable' | 'require' | 'verify-ca' | 'verify-full';

const MODES: readonly string[] = ['disable', 'require', 'verify-ca', 'verify-full'];
/** The URL parameters this module answers for; taken out of the URL given to pg: what pg parses from a connection string overrides the `ssl` it is given. */
const TLS_PARAMETERS = ['sslmode', 'sslrootcert', 'sslcert', 'sslkey', 'sslnegotiation', 'uselibpqcompat'] as const;

export interface PgSsl {
  /** The URL without its TLS parameters. */
  url: string;
  mode: SslMode;
  /** The `ssl` option of a pg client or pool: false for plain. */
  ssl: false | ConnectionOptions;
  /** `direct`: TLS from the first byte (PostgreSQL 17), without the SSLRequest round trip. */
  sslnegotiation?: 'direct';
}

/** The URL's TLS parameters, checked; no file is read. Throws an Error whose message names the fault. */
export function sslParameters(url: string): { mode: SslMode; rootcert?: string; cert?: string; key?: string; negotiation?: 'direct' } {
  const params = new URL(url).searchParams;
  if (params.has('ssl')) throw new Error('the `ssl` parameter is not read; say sslmode=require, verify-ca or verify-full (docs/operations.md, "Database TLS")');
  const raw = params.get('sslmode') ?? 'disable';
  if (raw === 'allow' || raw === 'prefer')
    throw new Error(`sslmode=${raw} falls back between plain and encrypted connections, which the pg driver cannot: say sslmode=require (encrypted) or sslmode=disable (plain)`);
  if (!MODES.includes(raw)) throw new Error(`unknown sslmode=${raw}: disable, require, verify-ca or verify-full`);
  const rootcert = params.get('sslrootcert') ?? undefined;
  // libpq: sslrootcert=system allows verify-full only (another mode with it is an error there too).
  if (rootcert === 'system' && raw !== 'verify-full') throw new Error('sslrootcert=system requires sslmode=verify-full');
  const cert = params.get('sslcert') ?? undefined;
  const key = params.get('sslkey') ?? undefined;
  if (!cert !== !key) throw new Error('sslcert and sslkey go together');
  const negotiation = params.get('sslnegotiation') ?? 'postgres';
  if (negotiation !== 'postgres' && negotiation !== 'direct') throw new Error(`unknown sslnegotiation=${negotiation}: postgres or direct`);
  const mode = raw as SslMode;
  if (mode === 'disable' && (rootcert || cert || negotiation === 'direct')) throw new Error('sslrootcert, sslcert and sslnegotiation=direct need an sslmode other than disable');
  return { mode, ...(rootcert ? { rootcert } : {}), ...(cert ? { cert, key } : {}), ...(negotiation === 'direct' ? { negotiation } : {}) };
}

/**
 * The TLS of every PostgreSQL connection the platform makes — the ORM's pool and each `pg.Client` of
 * its own (db:setup, the migrate lock, concurrent index builds, the demo) — from one rule: the URL's
 * libpq parameters, read as libpq reads them (docs/operations.md, "Database TLS").
 *
 * Without it the same URL meant three things. MikroORM takes host, port, user, password and database
 * from the URL and drops the rest: with `?sslmode=require` the ORM connected in plain text. `pg`
 * (pg-connection-string 2.x) reads `sslmode=require` as `verify-full`: against Heroku's or RDS's
 * certificates, unknown to Node's trust store, its clients failed where libpq's connect.
 *
 * | sslmode | connection |
 * | --- | --- |
 * | unset, `disable` | plain |
 * | `require` | encrypted, the certificate not checked — unless `sslrootcert` names a CA: then as `verify-ca` |
 * | `verify-ca` | encrypted, the certificate signed by `sslrootcert`'s CA (else Node's trust store), any host name |
 * | `verify-full` | as `verify-ca`, and the certificate names the URL's host |
 *
 * `allow` and `prefer` are refused: they fall back between plain and encrypted, which `pg` cannot; a
 * URL that says one means to encrypt when it can, and would silently not. `sslrootcert`, `sslcert`,
 * `sslkey` are file paths (`sslrootcert=system`: Node's trust store, which libpq makes verify-full).
 * PGSSLMODE and the other PG* variables are not read: the URL alone says it.
 *
 * What a pg client or pool (and the ORM's driverOptions) is given for `url`. Reads the certificate files named.
 */
export function pgSsl(url: string): PgSsl {
  const { mode, rootcert, cert, key, negotiation } = sslParameters(url);
  const stripped = new URL(url);
  for (const p of TLS_PARAMETERS) stripped.searchParams.delete(p);
  // An explicit `ssl` is given to pg always, false too: given none, pg reads PGSSLMODE with its own meanings.
  const base = { url: stripped.toString(), mode, ...(negotiation ? { sslnegotiation: negotiation } : {}) };
  if (mode === 'disable') return { ...base, ssl: false };
  const ssl: ConnectionOptions = {};
  if (rootcert && rootcert !== 'system') ssl.ca = readFileSync(rootcert, 'utf8');
  if (cert && key) {
    ssl.cert = readFileSync(cert, 'utf8');
    ssl.key = readFileSync(key, 'utf8');
  }
  // libpq: require with a root certificate verifies the chain, as verify-ca.
  if (mode === 'require' && !ssl.ca) ssl.rejectUnauthorized = false;
  else if (mode !== 'verify-full') ssl.checkServerIdentity = () => undefined;
  else {
    // Checked against the URL's host, IP addresses included: pg gives Node's TLS no server name for an
    // IP address, and Node then checks the certificate against "localhost" — which passed a certificate
    // for localhost at 10.0.0.5 and failed one for 10.0.0.5 (test/integration/database-ssl.test.ts).
    const host = stripped.hostname.replace(/^\[(.*)\]$/, '$1');
    ssl.checkServerIdentity = (_name, cert) => checkServerIdentity(host, cert);
  }
  return { ...base, ssl };
}

/** The options of a `pg.Client` / `pg.Pool` of its own for `url`. */
export function pgClientConfig(url: string): { connectionString: string; ssl: false | ConnectionOptions; sslnegotiation?: 'direct' } {
  const { url: connectionString, ssl, sslnegotiation } = pgSsl(url);
  return { connectionString, ssl, ...(sslnegotiation ? { sslnegotiation } : {}) };
}
