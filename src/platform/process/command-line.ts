import { parseArgs, type ParseArgsOptionsConfig } from 'node:util';

/**
 * node:util's parseArgs for a command a person types (`npm run token`, `readiness`, `demo`). Bare,
 * `--help` and every mistyped option (`--tennat`) were node's ERR_PARSE_ARGS_* stack trace, exit 1,
 * with no word of what the command takes. Here `--help` or `-h` prints the usage to stdout, exit 0; an
 * unknown option, or one missing its value, prints what is wrong and the usage to stderr, exit 2 (the
 * commands' usage errors' code).
 */
export function parseCommandLine<T extends ParseArgsOptionsConfig>(usage: string, options: T, args: string[] = process.argv.slice(2)) {
  if (asksForHelp(args)) {
    console.log(usage);
    process.exit(0);
  }
  try {
    return parseArgs({ args, options });
  } catch (e) {
    console.error(`${(e as Error).message}\n${usage}`);
    process.exit(2);
  }
}

/** `--help` or `-h` before a `--` that ends the options. */
export function asksForHelp(args: string[]): boolean {
  const end = args.indexOf('--');
  return (end === -1 ? args : args.slice(0, end)).some((a) => a === '--help' || a === '-h');
}

/**
 * A command taking at most `max` plain arguments (db.ts): `--help` or `-h` prints the usage, exit 0;
 * any argument more is a usage error, exit 2. db.ts ignored its arguments: `npm run db:migrate -- --help`
 * applied the migrations.
 */
export function refuseExtraArguments(usage: string, command: string, args: string[], max: number): void {
  if (asksForHelp(args)) {
    console.log(usage);
    process.exit(0);
  }
  if (args.length > max) {
    console.error(`${command}: unexpected argument(s): ${args.join(' ')}\n${usage}`);
    process.exit(2);
  }
}
