import { ADMIN_COOKIE } from '../../src/platform/http/admin-auth.middleware.ts';

/**
 * The dashboard sign-in page's button, as a browser sends it: `POST <base>/admin/queues/sign-in` with
 * the link's token in a form body, from the dashboard's own page (`Sec-Fetch-Site: same-origin` and its
 * `Origin`) unless `headers` replace them. Not following the redirect. A GET of the `?token=` link only
 * shows the page (ADR 0017, amendment): this POST is what exchanges the link.
 */
export async function postSignIn(base: string, token: string, opts: { headers?: Record<string, string>; next?: string; path?: string } = {}) {
  const body = new URLSearchParams({ token, ...(opts.next !== undefined ? { next: opts.next } : {}) });
  const res = await fetch(`${base}${opts.path ?? '/admin/queues/sign-in'}`, {
    method: 'POST',
    redirect: 'manual',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...(opts.headers ?? { 'sec-fetch-site': 'same-origin', origin: base }) },
    body: body.toString(),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, setCookie: res.headers.get('set-cookie'), location: res.headers.get('location'), contentType: res.headers.get('content-type'), text };
}

/**
 * What a browser sends with a form that a page on another origin submits to the dashboard: another
 * site's, a sibling subdomain's (same site, another origin), and an older browser's, which sends no
 * Sec-Fetch-Site (its Origin decides; `null` from a sandboxed frame or a no-referrer page).
 */
export const OTHER_ORIGINS: ReadonlyArray<Readonly<Record<string, string>>> = [
  { 'sec-fetch-site': 'cross-site', origin: 'https://evil.example' },
  { 'sec-fetch-site': 'same-site', origin: 'https://tenant-content.example' },
  { origin: 'https://evil.example' },
  { origin: 'null' },
];

/** The `name=value` of the session cookie a sign-in set, as the browser sends it back ('' when none). */
export const sessionCookieOf = (setCookie: string | null): string => new RegExp(`^(${ADMIN_COOKIE}=[^;]*);`).exec(setCookie ?? '')?.[1] ?? '';
