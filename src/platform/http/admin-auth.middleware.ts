import { createHash, timingSafeEqual } from 'node:crypto';
import { isIPv6 } from 'node:net';
import express, { type NextFunction, type Request, type Response } from 'express';
import type { Logger } from 'pino';
import { AppError, ForbiddenError, ServiceUnavailableError, UnauthorizedError } from '../errors/app-error.ts';
import { KeysUnavailableError, type Principal, type TokenVerifier } from '../tenancy/jwt.ts';
import { tagMiddleware, type TokenRefusal } from '../tenancy/auth.middleware.ts';
import { sendProblem } from './problem.middleware.ts';
import { holdsSecretValue, isSecretQueryParam } from '../telemetry/attributes.ts';
import type { SlidingRateWindow } from './rate-window.ts';
import { claimsOf, SESSION_ID, type OperatorSessions } from './operator-sessions.ts';
import { inFlightPlaces, leaveLoadShedding } from './load-shed.ts';

/**
 * The role that opens the operator dashboard. Not a tenant role: the dashboard spans tenants (every
 * job's data, every tenant's submissions), so a tenant's own `admin` (who manages the tenant's
 * approval policy) must never open it. The identity provider issues this role to platform staff only.
 */
export const OPERATOR_ROLE = 'platform-operator';
/**
 * Holds a session id (ADR 0017), never a JWT: over plain HTTP to a loopback host only (local
 * development, a port-forward), where a `__Host-` cookie cannot be set (it needs `Secure`). Never read
 * over HTTPS, where a sibling subdomain could set a cookie of this name for the parent domain.
 */
export const ADMIN_COOKIE = 'dealix_admin_token';
/**
 * The session cookie over HTTPS (ADR 0017, amendment *one cookie per host*): a browser accepts a
 * `__Host-` cookie only from this very host, with `Secure`, `Path=/` and no `Domain`, so no sibling
 * subdomain (and no plain-HTTP page) can set or shadow it.
 */
export const ADMIN_HOST_COOKIE = `__Host-${ADMIN_COOKIE}`;
const BEARER = /^Bearer\s+([A-Za-z0-9\-_=]+\.[A-Za-z0-9\-_=]*\.[A-Za-z0-9\-_=+/]*)\s*$/i;
const JWT = /^[A-Za-z0-9\-_=]+\.[A-Za-z0-9\-_=]*\.[A-Za-z0-9\-_=+/]*$/;
/** The session (and its cookie) never outlives the token, and never a working day. */
const MAX_COOKIE_SECONDS = 8 * 3600;
/**
 * At most this many session ids of the cookie's name are looked up or ended per request. A browser
 * holds one per host, parent domain and path that set one (over HTTPS only the host's `__Host-` one
 * is read); a client sends what it likes, hundreds up to Node's header limit (more under
 * --max-http-header-size), each a Redis key an unauthenticated request would have read or deleted.
 */
const MAX_SESSION_COOKIES = 8;
/** Under the mount: GET shows a sign-out form, POST signs out. Any case, as Express routes the mount. */
const LOGOUT = /^\/logout\/?$/i;
/** Under the mount: the sign-in page's form posts a `?token=` link's token here, the only request that exchanges it. */
const SIGN_IN = /^\/sign-in\/?$/i;
/**
 * The sign-in page: nothing but its form may load or run — no script (the token is in the page, so no
 * script may read it), no style, image or font from anywhere, no `<base>`, no frame around it — and its
 * form posts only to this origin.
 */
const SIGN_IN_PAGE_CSP = "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/** The sign-in form's body: a token (a few KiB at most) and the page to go on to. */
const parseSignInForm = express.urlencoded({ extended: false, limit: '16kb', parameterLimit: 4 });
/**
 * Sign-in exchanges each API process reads the form of at once: past them a sign-in is 503. The
 * exchange reads its form before any credential is checked, so anyone can hold one open by sending
 * the form slowly: it takes one of these places, never one of API_MAX_INFLIGHT's (which the tenants'
 * requests need), and only for SIGN_IN_FORM_DEADLINE_MS.
 */
export const SIGN_IN_MAX_IN_FLIGHT = 4;
/** The sign-in form (a few KiB a browser sends at once) must arrive whole within this, else 408 and the connection closes. */
export const SIGN_IN_FORM_DEADLINE_MS = 5_000;

export interface AdminAuthOptions {
  verifier: TokenVerifier;
  logger: Logger;
  /** Operator credentials for HTTP Basic (OPERATOR_USER / OPERATOR_PASSWORD); Basic is refused when unset. */
  operator?: { user: string; password: string } | undefined;
  /** The mount path, for the cookie's Path and the redirect after the token exchange. */
  basePath: string;
  /**
   * Failed Basic logins per client address in the last window, sliding (shared by every API process
   * through Redis): at `maxFailures` the address gets 429 until the oldest of them is a window old, right or wrong credentials alike,
   * so the password cannot be guessed at the speed of the network. Absent or 0: not throttled.
   */
  loginThrottle?: { window: SlidingRateWindow; maxFailures: number } | undefined;
  /**
   * Signed-out tokens, exchanged `?token=` links and the sessions they started, shared by every API
   * process through Redis. Not optional: without it a signed-out token and a replayed link would be accepted.
   */
  sessions: OperatorSessions;
}

/**
 * Guards the operator dashboard. Accepted, in order: a bearer JWT with role `platform-operator` (Authorization
 * header, for tools); HTTP Basic with the operator credentials from the environment; or the HttpOnly
 * cookie of a session that a `?token=<jwt>` link started. A GET of the link only shows a sign-in page:
 * chat apps' link previews, mail scanners and browser prefetches GET the links they see, and would use
 * the link up before the operator clicks it (ADR 0017, amendment). The page's button posts the token
 * (in the body) to `<mount>/sign-in`, which exchanges it and redirects (303) to the dashboard. The
 * exchange works once, and trades its token for the session: the cookie holds an opaque random id whose record in Redis holds the token (ADR 0017), and the token
 * itself is refused from then on, as a link, a bearer header or a cookie alike — the link's copies in a
 * browser's history or a proxy's log sign no one in. The token behind a session or a header is verified
 * on every request (signature, `exp`, role: a rotated key ends it), and a sign-out (`POST <mount>/logout`)
 * ends the session and revokes the token on every API process. The dashboard spans tenants: a tenant's
 * roles (`admin`, `approver`) do not open it.
 */
export function adminAuth(opts: AdminAuthOptions) {
  const signInPlaces = inFlightPlaces(SIGN_IN_MAX_IN_FLIGHT);
  return tagMiddleware(async function adminAuthMiddleware(req: Request, res: Response, next: NextFunction) {
    try {
      const signingIn = SIGN_IN.test(req.path);
      guardBrowser(opts, req, res, signingIn);
      if (signingIn) {
        await exchangeLink(opts, req, res, signInPlaces);
        return;
      }
      if (LOGOUT.test(req.path)) {
        await signOut(opts, req, res);
        return;
      }
      const queryToken = typeof req.query.token === 'string' ? req.query.token : undefined;
      if (queryToken !== undefined) {
        await signInPage(opts, req, res, queryToken);
        return;
      }
      const header = req.get('authorization');
      const bearer = header ? BEARER.exec(header)?.[1] : undefined;
      if (bearer) {
        await verifyAdmin(opts, req, bearer, 'bearer');
        return next();
      }
      if (header && /^Basic\s+/i.test(header)) {
        const throttle = opts.loginThrottle && opts.loginThrottle.maxFailures > 0 ? opts.loginThrottle : undefined;
        const client = throttleSubject(req.ip);
        // Counted as a failure before the check and taken back when right: guesses arriving together
        // each get their own count (a read then a later count would let them all through at once).
        const attempt = throttle ? await throttle.window.hit(client) : undefined;
        if (throttle && attempt && attempt.count > throttle.maxFailures) {
          // Not checked, so no failure: kept counted, the right credentials of a burst (a browser loading
          // the board's assets in parallel) would pile up behind the allowance and lock the operator out.
          await throttle.window.unhit(attempt);
          opts.logger.warn({ security_event: 'operator_login_throttled', path: req.path, ip: req.ip, failures: attempt.count - 1 }, 'operator login throttled');
          throw new AppError('rate_limited', 'Too Many Requests', {
            status: 429,
            retryable: true,
            detail: `${throttle.maxFailures} failed operator logins from this address; try again in ${attempt.retryAfter} s.`,
            headers: { 'Retry-After': String(attempt.retryAfter) },
          });
        }
        if (!opts.operator || !basicMatches(header, opts.operator)) {
          opts.logger.warn({ security_event: 'operator_login_failed', path: req.path, ip: req.ip, failures: attempt?.count }, 'rejected operator credentials');
          throw unauthorized(opts, 'The operator credentials are not valid.');
        }
        if (throttle && attempt) await throttle.window.unhit(attempt);
        return next();
      }
      const cookieName = sessionCookieName(req);
      const cookies = cookieName === undefined ? [] : readCookies(req.get('cookie'), cookieName);
      if (cookies.length > 0) {
        await resumeSession(opts, req, cookies);
        return next();
      }
      if (cookieName === undefined && sessionIdsOf(req, [ADMIN_COOKIE, ADMIN_HOST_COOKIE]).length > 0) throw unauthorized(opts, PLAIN_HTTP);
      throw unauthorized(opts, `Sign in with a bearer token with the role ${OPERATOR_ROLE}, ?token=<jwt> once, or the operator credentials.`);
    } catch (e) {
      // Answer here: the dashboard is mounted before the API's error handler would see it.
      sendProblem(res, e, opts.logger);
    }
  }, 'admin-auth');
}

const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

/**
 * What protects an operator's browser from other sites. Every dashboard response may not be framed
 * (clickjacking: a page overlaying the board's buttons), sniffed, or name its URL in a Referer. And a
 * state-changing request (Bull Board's retry, promote, clean, pause; the writes admin-board.ts refuses) must come from the
 * dashboard's own origin: a browser attaches cached HTTP Basic credentials to a form another site
 * submits, and the SameSite=Strict cookie to one a sibling subdomain (same site) submits. The check
 * is Go's CrossOriginProtection: `Sec-Fetch-Site` when the browser sends it, else `Origin` against the
 * request's host; neither (a tool, curl) is not a browser and passes.
 *
 * `ownPageOnly` (the sign-in exchange) wants proof instead: `Sec-Fetch-Site: same-origin`, or else an
 * `Origin` of this scheme and host. The attack there is login CSRF — another site posting *its* token from the
 * operator's browser, which would sign the operator in as the attacker, and carries no cookie for
 * SameSite to withhold — and a browser too old to send `Sec-Fetch-Site` may send no `Origin` either.
 * Only a browser needs the exchange (its answer is a cookie); a tool has the bearer header.
 */
function guardBrowser(opts: AdminAuthOptions, req: Request, res: Response, ownPageOnly = false): void {
  res.setHeader('X-Frame-Options', 'DENY');
  res.setHeader('Content-Security-Policy', "frame-ancestors 'none'");
  res.setHeader('X-Content-Type-Options', 'nosniff');
  res.setHeader('Referrer-Policy', 'no-referrer');
  if (SAFE_METHODS.has(req.method)) return;
  const site = req.get('sec-fetch-site');
  const origin = req.get('origin');
  const ownOrigin =
    site !== undefined ? site === 'same-origin' || (site === 'none' && !ownPageOnly) : origin !== undefined ? sameHost(origin, req, ownPageOnly) : !ownPageOnly;
  if (!ownOrigin) {
    opts.logger.warn({ security_event: 'admin_cross_origin', method: req.method, path: req.path, ip: req.ip, sec_fetch_site: site, origin }, 'refused a cross-origin dashboard action');
    throw new ForbiddenError(`A ${req.method} to the dashboard must come from the dashboard itself, not from another site (Sec-Fetch-Site: ${site ?? '-'}, Origin: ${origin ?? '-'}).`);
  }
}

/**
 * Whether `origin` names the request's host (`trust proxy` decides whether X-Forwarded-Host and
 * -Proto stand for the Host and the scheme). `withScheme` (the sign-in exchange) compares the scheme too:
 * `http://dashboard` is another origin than `https://dashboard`, and a network attacker can serve a
 * page on the plain-HTTP side that posts its own token (login CSRF). The board's other writes keep Go's
 * host-only comparison: a TLS-terminating proxy without TRUST_PROXY would otherwise refuse them all.
 */
function sameHost(origin: string, req: Request, withScheme: boolean): boolean {
  let url: URL;
  try {
    url = new URL(origin);
  } catch {
    return false; // `null` (a sandboxed frame, a file, a no-referrer page's form) or garbage: no origin of ours
  }
  return url.host === req.host && (!withScheme || url.protocol === `${req.protocol}:`);
}

/** Why a plain-HTTP request to a host other than loopback gets no dashboard session. */
const PLAIN_HTTP =
  'The dashboard is served over plain HTTP here: its session cookie works only over HTTPS (behind a TLS-terminating proxy, set TRUST_PROXY so that its X-Forwarded-Proto is believed) or on localhost. A bearer header or the operator credentials work meanwhile.';

/**
 * The session cookie's name for this request (ADR 0017, amendment *one cookie per host*): `__Host-…`
 * over HTTPS (`req.secure`, believing a proxy's X-Forwarded-Proto as `trust proxy` says); the plain
 * name over HTTP to a loopback host (local development: a browser sets no `__Host-` cookie without
 * `Secure`); none over plain HTTP to any other host, where no session is opened or resumed.
 */
function sessionCookieName(req: Request): string | undefined {
  if (req.secure) return ADMIN_HOST_COOKIE;
  return isLoopback(req.hostname) ? ADMIN_COOKIE : undefined;
}

/** `localhost`, a `*.localhost` name, 127.0.0.0/8 or `::1`: names a browser resolves to this machine only. */
function isLoopback(hostname: string | undefined): boolean {
  const host = (hostname ?? '').toLowerCase().replace(/^\[(.*)\]$/, '$1');
  return host === 'localhost' || host.endsWith('.localhost') || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host) || host === '::1';
}

/** The session cookie a sign-in sets (`maxAge` 0 and no value: deletes it). Over HTTPS it also deletes the plain-named cookie an earlier version set there, which is never read over HTTPS. */
function sessionCookies(opts: AdminAuthOptions, req: Request, value: string, maxAge: number): string[] {
  const plain = (v: string, age: number) => `${ADMIN_COOKIE}=${v}; Path=${opts.basePath}; HttpOnly; SameSite=Strict; Max-Age=${age}${req.secure ? '; Secure' : ''}`;
  if (!req.secure) return [plain(value, maxAge)];
  return [`${ADMIN_HOST_COOKIE}=${value}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${maxAge}; Secure`, plain('', 0)];
}

/** The session cookie's name for a sign-in, or a 403 over plain HTTP to a host other than loopback (nothing used up). */
function sessionCookieFor(opts: AdminAuthOptions, req: Request): string {
  const name = sessionCookieName(req);
  if (name !== undefined) return name;
  opts.logger.warn({ security_event: 'operator_session_insecure', path: req.path, ip: req.ip, host: req.hostname }, 'refused a dashboard sign-in over plain HTTP');
  throw new ForbiddenError(PLAIN_HTTP);
}

/**
 * The session ids the request's cookies of these names hold: each value of the right shape, once, in
 * the order of `names` (the host's own name first: a flood of plain-named ones, which a sibling can
 * plant, cannot push it out), at most MAX_SESSION_COOKIES.
 */
function sessionIdsOf(req: Request, names: readonly string[]): string[] {
  const header = req.get('cookie');
  return [...new Set(names.flatMap((name) => readCookies(header, name)).filter((value) => SESSION_ID.test(value)))].slice(0, MAX_SESSION_COOKIES);
}

/**
 * Lets the request in on the session one of its cookies names (`values`: every cookie of the
 * session's name it carries). A browser sends every cookie of a name it holds — for this host and
 * for a parent domain, for each path — in an order the server cannot rely on, so each is tried (one
 * MGET for all; only an id of the right shape is looked up: a JWT there, or anything a client makes
 * up, is no session): a cookie naming nothing does not hide a valid one, and the request is let in
 * only when exactly one names an open session whose token verifies and has not reached its `exp`. Two of them (one planted: session
 * fixation) sign nothing in; signing out ends both. More than MAX_SESSION_COOKIES ids: refused unread.
 */
async function resumeSession(opts: AdminAuthOptions, req: Request, values: readonly string[]): Promise<void> {
  const ids = [...new Set(values.filter((value) => SESSION_ID.test(value)))];
  // More than a browser holds: none is looked up. Not the first few only: the open session beyond them
  // could be a second one (one planted), and choosing among them is what the rule below refuses.
  if (ids.length > MAX_SESSION_COOKIES) {
    opts.logger.warn({ security_event: 'operator_session_ambiguous', cookies: ids.length, path: req.path, ip: req.ip }, 'refused a request carrying too many dashboard session cookies');
    throw unauthorized(opts, `This request carries ${ids.length} dashboard session cookies, more than a browser holds (${MAX_SESSION_COOKIES}): clear this site's cookies in the browser (a sign-out deletes only this host's own) and sign in again with a new ?token= link.`);
  }
  const tokens = ids.length > 0 ? await opts.sessions.tokensOf(ids) : [];
  const open: string[] = [];
  let refusal: unknown;
  for (const token of tokens) {
    if (token === undefined) continue;
    try {
      // Verified at the exchange; again (the memo of ADR 0006 makes it cheap) so that a rotated signing
      // key ends the session as it ends the token.
      await verifyOperator(opts, req, token);
      // The verifier accepts a token up to JWT_CLOCK_TOLERANCE past its `exp`; a session, whose roles
      // are the token's as they were at the exchange, ends at `exp` itself by this process's clock,
      // whatever its Redis key's TTL (counted from a moment before Redis wrote it) still says.
      if (Date.now() >= (claimsOf(token).exp ?? 0) * 1000) {
        refusal ??= unauthorized(opts, 'This dashboard session has ended: its token expired. Sign in again with a new ?token= link.');
        continue;
      }
      open.push(token);
    } catch (e) {
      refusal ??= e;
    }
  }
  if (open.length === 1) return;
  if (open.length > 1) {
    opts.logger.warn({ security_event: 'operator_session_ambiguous', sessions: open.length, path: req.path, ip: req.ip }, 'refused a request naming more than one dashboard session');
    throw unauthorized(opts, 'This request carries cookies of more than one dashboard session: sign out (POST /logout ends them all) and sign in again with a new ?token= link.');
  }
  if (refusal !== undefined) throw refusal;
  opts.logger.warn({ security_event: 'operator_session_unknown', path: req.path, ip: req.ip, cookies: values.length }, 'refused a dashboard cookie that names no session');
  throw unauthorized(opts, 'This dashboard session has ended (signed out or expired) or never existed: sign in again with a new ?token= link.');
}

/**
 * `GET <mount>…?token=<jwt>`: checks the link's token, as the exchange will (so a used, signed-out,
 * expiring or role-less link says so at once), and answers a page whose button posts the token to the
 * exchange — using nothing up and setting no cookie, however many times a link preview, a scanner or
 * a prefetch GETs it. The page shows whom the token signs in, so that an operator sent someone else's
 * link (login CSRF by link) can see it is not theirs. Not cached or stored (`no-store`), no Referer
 * (the URL holds the token), and a CSP under which no script runs and nothing loads.
 */
async function signInPage(opts: AdminAuthOptions, req: Request, res: Response, token: string): Promise<void> {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    throw new AppError('method_not_allowed', 'Method Not Allowed', { status: 405, retryable: false, detail: "A ?token= link is opened (GET): its page's button signs in.", headers: { Allow: 'GET, HEAD' } });
  }
  // Every answer to a URL holding a token, a refusal (403 over plain HTTP, 401) as much as the page.
  res.setHeader('Cache-Control', 'no-store');
  sessionCookieFor(opts, req);
  const { sub } = await checkLink(opts, req, token);
  res.setHeader('Content-Security-Policy', SIGN_IN_PAGE_CSP);
  const form =
    `<form method="post" action="${html(`${opts.basePath}/sign-in`)}">` +
    `<p>Sign in to the operator dashboard as <strong>${html(sub)}</strong>?</p>` +
    `<input type="hidden" name="token" value="${html(token)}">` +
    `<input type="hidden" name="next" value="${html(withoutToken(req.originalUrl, opts.basePath))}">` +
    '<button type="submit">Sign in</button></form>' +
    '<p>The link works once: this button uses it up and opens this browser\'s session. Opening the page used nothing up (a chat\'s link preview or a mail scanner opens it too). ' +
    'If you did not ask for this link, or it is not your name above, do not sign in.</p>';
  res.status(200).type('html').send(page('Sign in', form));
}

/**
 * `POST <mount>/sign-in`, the sign-in page's button: exchanges the token of the form's body (never the
 * URL's: a URL is logged and kept in histories) for a session, once (ADR 0017), sets its cookie and
 * redirects (303) to the page the link named. guardBrowser has required the dashboard's own page as
 * the sender (login CSRF).
 */
async function exchangeLink(opts: AdminAuthOptions, req: Request, res: Response, places: { take(res: Response): boolean }): Promise<void> {
  if (req.method !== 'POST') {
    throw new AppError('method_not_allowed', 'Method Not Allowed', { status: 405, retryable: false, detail: 'The sign-in page posts here: open the ?token= link.', headers: { Allow: 'POST' } });
  }
  res.setHeader('Cache-Control', 'no-store');
  // Its form is read before any credential is checked: counted among the sign-in's own places, not the API's.
  leaveLoadShedding(res);
  if (!places.take(res)) {
    opts.logger.warn({ security_event: 'operator_sign_in_shed', path: req.path, ip: req.ip, in_flight: SIGN_IN_MAX_IN_FLIGHT }, 'refused a dashboard sign-in: every sign-in place is taken');
    throw new ServiceUnavailableError(`${SIGN_IN_MAX_IN_FLIGHT} sign-ins are being read on this API instance. Retry after the indicated delay.`, undefined, 1);
  }
  const form = await readSignInForm(req, res);
  const { token, next } = form;
  if (typeof token !== 'string') {
    throw new AppError('bad_request', 'Bad Request', { status: 400, retryable: false, detail: 'Post the form of the ?token= link\'s page: one token, in an application/x-www-form-urlencoded body.' });
  }
  const cookieName = sessionCookieFor(opts, req);
  const { maxAge } = await checkLink(opts, req, token);
  // Checked again with the exchange, in one step: a sign-out or another exchange since the check above.
  // The browser's sessions from earlier links end with it (every cookie of the name is about to be
  // replaced; over HTTPS, the plain-named one an earlier version set is deleted too).
  const previous = sessionIdsOf(req, cookieName === ADMIN_HOST_COOKIE ? [ADMIN_HOST_COOKIE, ADMIN_COOKIE] : [ADMIN_COOKIE]);
  const session = await opts.sessions.exchange(token, maxAge, previous);
  if (session === 'used') throw linkUsed(opts, req, 'link');
  if (session === 'revoked') throw unauthorized(opts, 'This token has been signed out. Sign in with a new token.');
  res.setHeader('Set-Cookie', sessionCookies(opts, req, session.id, maxAge));
  // `next` is what the form says, so anything anyone posts: withoutToken keeps it under the dashboard.
  res.redirect(303, withoutToken(typeof next === 'string' ? next : opts.basePath, opts.basePath));
}

/**
 * The sign-in form, within SIGN_IN_FORM_DEADLINE_MS: a form still arriving then is answered 408 and
 * its connection closed (the rest of it is not awaited), which frees its sign-in place.
 */
function readSignInForm(req: Request, res: Response): Promise<Record<string, unknown>> {
  return new Promise<Record<string, unknown>>((resolve, reject) => {
    const late = setTimeout(() => {
      reject(
        new AppError('request_timeout', 'Request Timeout', {
          status: 408,
          retryable: true,
          detail: `The sign-in form did not arrive whole within ${SIGN_IN_FORM_DEADLINE_MS / 1000} s.`,
          headers: { Connection: 'close' },
        }),
      );
    }, SIGN_IN_FORM_DEADLINE_MS);
    parseSignInForm(req, res, (err?: unknown) => {
      clearTimeout(late);
      if (err) reject(err);
      else resolve((req.body ?? {}) as Record<string, unknown>);
    });
  });
}

/** A link's token that may be exchanged: an operator's, neither signed out nor exchanged, with a second of life left; the session's length. */
async function checkLink(opts: AdminAuthOptions, req: Request, token: string): Promise<{ sub: string; maxAge: number }> {
  // Only a token the cookie can carry back: jose also decodes a signature with whitespace around
  // it, which a Set-Cookie header cannot hold (a line break) or would keep (a tab).
  if (!JWT.test(token)) throw unauthorized(opts, 'The ?token= value is not a JWT.');
  const { exp, sub } = await verifyAdmin(opts, req, token, 'link');
  // Whole seconds: a browser ignores any other Max-Age (the cookie would outlive the token), and `exp` may have a fraction.
  const maxAge = Math.min(MAX_COOKIE_SECONDS, Math.floor((exp ?? 0) - Date.now() / 1000));
  // A token in its last second (the verifier's clock tolerance accepts it a little past `exp`) would
  // start a session that ends at once: refused before the link is used up.
  if (maxAge < 1) throw unauthorized(opts, 'This token expires now: sign in with a new token.');
  return { sub, maxAge };
}

/** A verified operator token, presented as itself (a link, a bearer header), that has been neither signed out nor exchanged by a link. */
async function verifyAdmin(opts: AdminAuthOptions, req: Request, token: string, channel: 'link' | 'bearer'): Promise<{ exp?: number; sub: string }> {
  const principal = await verifyOperator(opts, req, token);
  const refused = await withdrawn(opts.sessions, opts.logger, req, token, principal.sub, channel);
  if (refused !== undefined) throw unauthorized(opts, refused);
  return { ...claimsOf(token), sub: principal.sub };
}

/**
 * Why a verified operator token presented as itself is refused (logged), if it is: signed out, or
 * exchanged by a `?token=` link. One MGET; a Redis error is thrown (503: never skipped).
 */
async function withdrawn(sessions: OperatorSessions, logger: Logger, req: Request, token: string, sub: string, channel: 'link' | 'bearer'): Promise<string | undefined> {
  const refusal = await sessions.refusal(token);
  if (refusal === 'revoked') {
    logger.warn({ security_event: 'token_revoked', sub, path: req.path, ip: req.ip }, 'refused a signed-out operator token');
    return 'This token has been signed out. Sign in with a new token.';
  }
  if (refusal === 'exchanged') return linkUsedDetail(logger, req, channel, sub);
  return undefined;
}

/**
 * The API's refusal of an operator token the dashboard has withdrawn (router.ts, every route): signed
 * out, or a `?token=` link's, exchanged — refused "by header" everywhere, not only on the dashboard, or
 * the leaked link or signed-out token would still write any tenant's limits (`/api/v1/operator/…`) until
 * its `exp`. Only tokens with the operator role are looked up: a tenant's request costs nothing more.
 */
export function operatorTokenRefusal(sessions: OperatorSessions, logger: Logger): TokenRefusal {
  return async (token, principal, req) => {
    if (!principal.roles.includes(OPERATOR_ROLE)) return;
    const refused = await withdrawn(sessions, logger, req, token, principal.sub, 'bearer');
    if (refused !== undefined) throw new UnauthorizedError(refused);
  };
}

/**
 * A token whose `?token=` link was exchanged, presented again: as the link (a browser's history, a
 * proxy's log) or as a bearer header (anyone who read the link). Its one use was the exchange.
 */
function linkUsed(opts: AdminAuthOptions, req: Request, channel: 'link' | 'bearer', sub?: string): AppError {
  return unauthorized(opts, linkUsedDetail(opts.logger, req, channel, sub));
}

function linkUsedDetail(logger: Logger, req: Request, channel: 'link' | 'bearer', sub?: string): string {
  logger.warn({ security_event: 'token_link_reused', channel, sub, path: req.path, ip: req.ip }, 'refused the token of a ?token= link used before');
  return channel === 'link'
    ? 'This sign-in link (?token=) has been used already: it works once. Sign in with a new token.'
    : 'This token was handed out as a sign-in link (?token=) and used: it signs nothing in any more. Use a new token.';
}

/** A token that verifies and carries the operator role (signed out or not). */
async function verifyOperator(opts: AdminAuthOptions, req: Request, token: string): Promise<Principal> {
  let principal;
  try {
    principal = await opts.verifier.verify(token);
  } catch (e) {
    if (e instanceof KeysUnavailableError) {
      opts.logger.error({ err: e.cause, path: req.path }, "the identity provider's keys could not be fetched: operator token not checked (503)");
      throw e;
    }
    // Not checked either (the token revocation list not loaded yet, ADR 0018): 503, retry; not 401, sign in again.
    if (e instanceof ServiceUnavailableError) throw e;
    opts.logger.warn({ security_event: 'token_rejected', reason: (e as Error).message, path: req.path, ip: req.ip }, 'rejected admin token');
    throw unauthorized(opts, (e as AppError).detail ?? 'The token is not valid.');
  }
  if (!principal.roles.includes(OPERATOR_ROLE)) {
    opts.logger.warn({ security_event: 'admin_forbidden', sub: principal.sub, tenant_id: principal.tenantId, path: req.path, ip: req.ip }, 'token without the operator role');
    throw new ForbiddenError(`The dashboard spans tenants and needs the platform role: ${OPERATOR_ROLE}.`);
  }
  return principal;
}

/**
 * `GET <mount>/logout` shows a form whose button posts to `POST <mount>/logout`, which ends the
 * cookie's session and revokes the operator token the request carries (the session's, a bearer
 * header's) until its `exp`, in Redis for every API process, and deletes the cookie. A POST, not a link: a page cannot sign an operator out
 * with an `<img>`, and a form another site submits is refused by guardBrowser (the SameSite=Strict
 * cookie is not even sent cross-site). A token that does not verify is not written (nothing to
 * revoke, and Redis keeps nothing a stranger chose); the cookie is deleted all the same. HTTP Basic
 * has nothing to revoke: a browser forgets Basic credentials when it is closed.
 */
async function signOut(opts: AdminAuthOptions, req: Request, res: Response): Promise<void> {
  res.setHeader('Cache-Control', 'no-store');
  const action = `${opts.basePath}/logout`;
  if (req.method === 'GET' || req.method === 'HEAD') {
    res.status(200).type('html').send(page('Sign out', `<form method="post" action="${action}"><p>Sign out of the operator dashboard? This browser's session ends on every API process.</p><button type="submit">Sign out</button></form>`));
    return;
  }
  if (req.method !== 'POST') {
    throw new AppError('method_not_allowed', 'Method Not Allowed', { status: 405, retryable: false, detail: 'Sign out with POST; GET shows the form.', headers: { Allow: 'GET, HEAD, POST' } });
  }
  const bearer = BEARER.exec(req.get('authorization') ?? '')?.[1];
  // Every session the request's cookies name, of either name: ending one takes its id, its credential.
  const ended = await Promise.all(sessionIdsOf(req, [ADMIN_HOST_COOKIE, ADMIN_COOKIE]).map((id) => opts.sessions.close(id)));
  const revoked: string[] = [];
  for (const token of new Set([bearer, ...ended].filter((t): t is string => t !== undefined && JWT.test(t)))) {
    // A token not checked for want of the keys or the revocation list (503) is not "nothing to revoke": the operator retries.
    const principal = await verifyOperator(opts, req, token).catch((e: unknown) => {
      if (e instanceof ServiceUnavailableError) throw e;
      return undefined;
    });
    if (!principal) continue;
    await opts.sessions.revoke(token);
    revoked.push(principal.sub);
  }
  opts.logger.info({ security_event: 'operator_signed_out', subs: revoked, sessions_ended: ended.filter((t) => t !== undefined).length, path: req.path, ip: req.ip }, 'operator signed out');
  res.setHeader('Set-Cookie', sessionCookies(opts, req, '', 0));
  const what = revoked.length > 0 ? 'The token is revoked until it expires.' : 'No valid operator token came with the request: nothing to revoke.';
  res.status(200).type('html').send(page('Signed out', `<p>Signed out of the operator dashboard. ${what} A browser keeps HTTP Basic credentials until it is closed.</p>`));
}

/** Text for HTML, in an element or a quoted attribute. */
function html(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title: string, body: string): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${title} · Dealix queues</title></head><body><h1>${title}</h1>${body}</body></html>`;
}

/**
 * Whose failures a login counts: an IPv4 address (also one IPv4-mapped; without a port), or an IPv6 address's /64 —
 * the least a host or a customer is given, so counting by the full address would give a guesser 2^64
 * allowances. `2001:db8:1:2::5` → `2001:db8:1:2::/64`.
 */
function throttleSubject(address: string | undefined): string {
  if (!address) return 'unknown';
  // A proxy may append the client's port (Azure Application Gateway's `X-Forwarded-For: ip:port`,
  // which Express passes on as is): each connection would otherwise be a new allowance.
  const ip = (/^(\d+\.\d+\.\d+\.\d+):\d+$/.exec(address) ?? /^\[([^\]]+)\](?::\d+)?$/.exec(address))?.[1] ?? address;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  if (mapped) return mapped[1]!;
  if (!isIPv6(ip)) return ip;
  const [head = '', tail = ''] = ip.toLowerCase().split('%')[0]!.split('::');
  const left = head ? head.split(':') : [];
  const right = ip.includes('::') && tail ? tail.split(':') : [];
  const groups = [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right];
  return `${groups.slice(0, 4).map((g) => g.replace(/^0+(?=.)/, '')).join(':')}::/64`;
}

function unauthorized(opts: AdminAuthOptions, detail: string): AppError {
  const challenge = opts.operator ? 'Bearer, Basic realm="Dealix operator", charset="UTF-8"' : 'Bearer';
  return new AppError('unauthorized', 'Unauthorized', { status: 401, retryable: false, detail, headers: { 'WWW-Authenticate': challenge } });
}

function basicMatches(header: string, operator: { user: string; password: string }): boolean {
  const decoded = Buffer.from(header.replace(/^Basic\s+/i, ''), 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  if (i < 0) return false;
  // Compare digests: constant time, whatever the lengths.
  const same = (a: string, b: string) => timingSafeEqual(createHash('sha256').update(a).digest(), createHash('sha256').update(b).digest());
  const userOk = same(decoded.slice(0, i), operator.user);
  const passwordOk = same(decoded.slice(i + 1), operator.password);
  return userOk && passwordOk;
}

/**
 * The values of every cookie named `name`, percent-decoded, in the header's order (a browser sends one
 * per domain and path that set it). Any client sends any Cookie header: a value that does not decode
 * is no credential (skipped), not a URIError that would answer 500.
 */
function readCookies(header: string | undefined, name: string): string[] {
  const values: string[] = [];
  for (const part of header?.split(';') ?? []) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) {
      try {
        values.push(decodeURIComponent(part.slice(eq + 1).trim()));
      } catch {
        // not a credential
      }
    }
  }
  return values;
}

/**
 * Where the token exchange redirects (the sign-in page's `next`, or whatever a form posts as it): the same dashboard URL without `token` (nor `access_token`, `password`, in any case). Only a path under the
 * dashboard: a raw request path such as `/admin/queues/../..//evil.example/` resolves to
 * `//evil.example/`, which a browser would follow to another host (an open redirect).
 */
function withoutToken(originalUrl: string, basePath: string): string {
  const url = new URL(originalUrl, 'http://local');
  // Every credential the query held (a second one, any case: `&Access_Token=`), not only the token taken:
  // the Location header is written to the request log, and the browser would keep it in its history.
  // A JWT or a secret pair under another name (`&next=eyJ…`, `&next=/x?token=…`) too, as the log redacts it.
  for (const name of new Set(url.searchParams.keys())) if (isSecretQueryParam(name) || holdsSecretValue(url.searchParams.getAll(name))) url.searchParams.delete(name);
  const underBoard = url.pathname === basePath || url.pathname.startsWith(`${basePath}/`);
  return `${underBoard ? url.pathname : basePath}${url.search}`;
}
