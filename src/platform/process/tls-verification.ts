import type { Logger } from 'pino';
import { nodeTlsEnv } from '../config/config.ts';

/**
 * NODE_TLS_REJECT_UNAUTHORIZED=0 turns certificate verification off for every TLS connection the process
 * makes without its own `rejectUnauthorized` (Node's default): the https JWKS fetch, webhook deliveries,
 * PostgreSQL and Redis over TLS. Whoever is on the path can then present any certificate: as open to
 * tampering as plaintext. Node reads exactly '0' as off ('false', ' 0' still verify), at each connection.
 * Start-up does not refuse it (deployments running with it would stop); in production it is a warning at
 * API and worker start and the readiness row `tls-verification` fails.
 */
export function tlsVerificationOff(env: NodeJS.ProcessEnv): boolean {
  return env.NODE_TLS_REJECT_UNAUTHORIZED === '0';
}

/** What NODE_TLS_REJECT_UNAUTHORIZED=0 exposes (the start-up warning and the readiness row say it). */
export const TLS_VERIFICATION_OFF_RISK =
  'NODE_TLS_REJECT_UNAUTHORIZED=0: TLS certificates are not verified, so the JWKS fetch (JWT_JWKS_URL), webhook deliveries and PostgreSQL/Redis over TLS are as open to tampering as plaintext';
export const TLS_VERIFICATION_REMEDY = "remove NODE_TLS_REJECT_UNAUTHORIZED from every API and worker's environment; for a private CA, give its certificate with NODE_EXTRA_CA_CERTS=<file.pem> instead";

/** The start of an API or worker process in production says, once, that certificate verification is off. */
export function warnWhenTlsVerificationOff(logger: Logger, nodeEnv: string, env: NodeJS.ProcessEnv = nodeTlsEnv()): void {
  if (nodeEnv !== 'production' || !tlsVerificationOff(env)) return;
  logger.warn({ security_event: 'tls_verification_off' }, `${TLS_VERIFICATION_OFF_RISK}; ${TLS_VERIFICATION_REMEDY}`);
}
