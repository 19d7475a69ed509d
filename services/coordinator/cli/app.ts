/**
 * migctl from argv to exit code: parse, connect, run the command, and turn every error into one
 * line on stderr (a JSON object with --json) and the documented exit code. The process entry
 * point (migctl.ts) only supplies the real I/O, environment, signal and client factory.
 */
import { MigdError } from '../../shared/errors.js';
import { CERTIFICATE_REJECTED } from '../../shared/rpc/tls-probe.js';
import { parseCommandLine, type ArgsEnvironment, type GlobalOptions, type HelpRequest, type Invocation } from './args.js';
import { runCommand, type CliIo, type CoordinatorClient } from './commands.js';
import { ExitCode, exitCodeForError } from './exit-codes.js';
import { commandHelp, mainHelp } from './help.js';
import { UsageError } from './units.js';

export interface AppDeps extends ArgsEnvironment {
  readonly io: CliIo;
  readonly signal: AbortSignal;
  readonly newKey: () => string;
  /**
   * Makes the client (reads the certificates). Errors here are configuration errors: exit 2.
   */
  readonly connect: (global: GlobalOptions) => CoordinatorClient & { close(): void };
}

/** A one-line explanation of `err`, with a hint where one helps. */
export function describeError(err: unknown, global: GlobalOptions | undefined): string {
  if (err instanceof UsageError) return err.message;
  if (!(err instanceof MigdError)) return `unexpected error: ${err instanceof Error ? err.message : String(err)}`;
  const where = global ? ` at ${global.coordinator}` : '';
  switch (err.code) {
    case 'UNAVAILABLE':
      return `coordinator${where} unavailable: ${err.message} (is it running? see --coordinator, MIGD_COORDINATOR)`;
    case 'DEADLINE_EXCEEDED':
      return `no answer from the coordinator${where} in time: ${err.message} (see --timeout)`;
    case 'UNAUTHENTICATED':
      if (err.reason === CERTIFICATE_REJECTED) return `${err.message}${global ? ` (identity "${global.identity}", see --cert-dir, --identity)` : ''}`;
      return `permission denied${global ? ` for identity "${global.identity}"` : ''}: ${err.message}`;
    case 'PERMISSION_DENIED':
      return `permission denied${global ? ` for identity "${global.identity}"` : ''}: ${err.message}`;
    case 'NOT_FOUND':
      return `not found: ${err.message}`;
    case 'CANCELLED':
      return 'interrupted';
    default:
      return `${err.code.toLowerCase().replace(/_/g, ' ')}: ${err.message}${err.reason ? ` [${err.reason}]` : ''}`;
  }
}

function report(deps: AppDeps, err: unknown, code: ExitCode, json: boolean, global?: GlobalOptions): void {
  const message = describeError(err, global);
  if (json) {
    const e = err instanceof MigdError ? { code: err.code, reason: err.reason, message: err.message } : { code: err instanceof UsageError ? 'USAGE' : 'UNKNOWN', message };
    deps.io.stderr(`${JSON.stringify({ error: { ...e, exitCode: code } })}\n`);
  } else {
    deps.io.stderr(`migctl: ${message}\n`);
  }
}

/** Runs migctl with `argv` (without node and the script); resolves to the exit code. */
export async function runMigctl(argv: readonly string[], deps: AppDeps): Promise<ExitCode> {
  let inv: Invocation | HelpRequest;
  try {
    inv = parseCommandLine(argv, deps);
  } catch (err) {
    report(deps, err, ExitCode.USAGE, argv.includes('--json'));
    return ExitCode.USAGE;
  }
  if (inv.kind === 'help') {
    const text = inv.command ? commandHelp(inv.command) : mainHelp();
    if (inv.asked) {
      deps.io.stdout(text);
      return ExitCode.OK;
    }
    deps.io.stderr(text);
    return ExitCode.USAGE;
  }
  let client: (CoordinatorClient & { close(): void }) | undefined;
  try {
    client = deps.connect(inv.global);
  } catch (err) {
    // Missing or unreadable certificates, a bad address: nothing was sent.
    const wrapped = new UsageError(`cannot set up the connection: ${err instanceof Error ? err.message : String(err)}`);
    report(deps, wrapped, ExitCode.USAGE, inv.global.json, inv.global);
    return ExitCode.USAGE;
  }
  try {
    return await runCommand(inv, { client, io: deps.io, global: inv.global, signal: deps.signal, newKey: deps.newKey });
  } catch (err) {
    const code = exitCodeForError(err);
    if (!(code === ExitCode.INTERRUPTED && deps.signal.aborted)) report(deps, err, code, inv.global.json, inv.global);
    return code;
  } finally {
    client.close();
  }
}
