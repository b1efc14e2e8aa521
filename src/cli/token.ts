/**
 * npm run token -- --tenant <uuid> --sub <id> [--roles a,b] [--ttl 1h]: prints a development token signed with JWT_SECRET.
 * npm run token -- revoke … | revocations … | lift … | prune-revocations: an operator's token revocations (revocation-command.ts, ADR 0018).
 */
import { loadConfig } from '../platform/config/config.ts';
import { parseDurationMs } from '../platform/config/duration.ts';
import { asksForHelp, parseCommandLine } from '../platform/process/command-line.ts';
import { signDevToken } from '../platform/tenancy/jwt.ts';
import { isTenantId, TENANT_ID_PROBLEM } from '../platform/tenancy/tenant-id.ts';

const SIGN_USAGE = 'usage: npm run token -- --tenant <uuid> --sub <id> [--roles a,b] [--ttl 1h]';

if (asksForHelp(process.argv.slice(2))) {
  // Every form, the revocation commands' too: `npm run token -- --help` is where an operator looks for them.
  const { REVOCATION_USAGE } = await import('../platform/tenancy/revocation-command.ts');
  console.log(`${SIGN_USAGE}\n${REVOCATION_USAGE.replace(/^usage: /, '       ')}`);
} else if (['revoke', 'revocations', 'lift', 'prune-revocations'].includes(process.argv[2] ?? '')) {
  const { revocationCommand } = await import('../platform/tenancy/revocation-command.ts');
  process.exitCode = await revocationCommand(process.argv.slice(2));
} else {
  await sign();
}

async function sign(): Promise<void> {
  const { values } = parseCommandLine(SIGN_USAGE, {
    tenant: { type: 'string' },
    sub: { type: 'string' },
    roles: { type: 'string', default: '' },
    ttl: { type: 'string', default: '1h' },
  });
  const usage: (problem?: string) => never = (problem) => {
    if (problem) console.error(problem);
    console.error(SIGN_USAGE);
    process.exit(2);
  };
  if (!values.tenant || !values.sub) usage();
  // The verifier's own schema: a looser 8-4-4-4-12 pattern printed tokens the API refused (401) at every use.
  if (!isTenantId(values.tenant)) usage(`--tenant: "${values.tenant}" ${TENANT_ID_PROBLEM}`);
  // A bad --ttl was parseDurationMs's stack trace, thrown past the entry.
  let ttlMs = 0;
  try {
    ttlMs = parseDurationMs(values.ttl);
  } catch (e) {
    usage(`--ttl: ${(e as Error).message}`);
  }
  // Rounded to whole seconds below: 0 would print a token whose exp is its iat, refused (401) at its first use.
  if (ttlMs < 1000) usage(`--ttl: ${values.ttl} is under a second: the token would expire as it is printed`);
  const config = loadConfig();
  if (!config.JWT_SECRET) {
    console.error('JWT_SECRET is not configured: refusing to sign a development token');
    process.exit(1);
  }
  // The API refuses a token this long after its iat whatever its exp (ADR 0018): a longer --ttl printed
  // a token that stops working, 401, while its exp says it is good.
  const maxS = Math.ceil(config.JWT_MAX_TOKEN_LIFETIME / 1000);
  if (maxS > 0 && Math.round(ttlMs / 1000) > maxS) usage(`--ttl: ${values.ttl} is longer than JWT_MAX_TOKEN_LIFETIME (${maxS} s): the API would refuse the token (401) before its exp`);
  const token = await signDevToken(config, {
    tenantId: values.tenant!,
    sub: values.sub!,
    roles: values.roles.split(',').map((r) => r.trim()).filter(Boolean),
    ttlSeconds: Math.round(ttlMs / 1000),
  });
  console.log(token);
}
