/**
 * migctl's command line → which command, its positional arguments, its flag values and the
 * global options (flags, then environment, then defaults). Global flags may come before or after
 * the command. Parsing uses node:util parseArgs in strict mode; its errors become UsageErrors.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { COMMANDS, GLOBAL_FLAGS, isCommandName, type CommandName, type FlagSpecs } from './spec.js';
import { UsageError, parseDurationMs } from './units.js';

/** Options every command shares, fully defaulted. */
export interface GlobalOptions {
  /** host:port of the coordinator; replicated coordinators: several, comma-separated (calls follow the leader). */
  readonly coordinator: string;
  /** Folder with ca.crt and <identity>.{crt,key}. */
  readonly certDir: string;
  /** Client certificate name. */
  readonly identity: string;
  /** Print proto JSON instead of tables. */
  readonly json: boolean;
  /** Deadline in ms given with --timeout (undefined: each command's default). */
  readonly timeoutMs: number | undefined;
}

/** A flag's value as parseArgs returns it. */
export type FlagValue = string | boolean | string[] | undefined;
export type FlagValues = Readonly<Record<string, FlagValue>>;

/** A command to run. */
export interface Invocation {
  readonly kind: 'run';
  readonly command: CommandName;
  readonly args: readonly string[];
  readonly flags: FlagValues;
  readonly global: GlobalOptions;
}

/** Help was asked for (`--help`, `help [COMMAND]`), or no command was given (`asked` false). */
export interface HelpRequest {
  readonly kind: 'help';
  readonly command: CommandName | undefined;
  readonly asked: boolean;
}

export interface ArgsEnvironment {
  readonly env: Readonly<Record<string, string | undefined>>;
  /** Default certificate folder (paths.certDir()); called only when neither flag nor env says. */
  readonly defaultCertDir: () => string;
}

export const DEFAULT_COORDINATOR = '127.0.0.1:7000';

const GLOBAL_WITH_VALUE = new Set(Object.entries(GLOBAL_FLAGS).filter(([, f]) => f.type === 'string').map(([n]) => `--${n}`));

function toParseArgsOptions(flags: FlagSpecs): NonNullable<ParseArgsConfig['options']> {
  const out: NonNullable<ParseArgsConfig['options']> = {};
  for (const [name, f] of Object.entries(flags)) {
    out[name] = { type: f.type, ...(f.short ? { short: f.short } : {}), ...(f.multiple ? { multiple: true } : {}) };
  }
  return out;
}

/** Where the command word(s) are: skips global flags (and their values) before it. */
function findCommand(argv: readonly string[]): { index: number; words: number; name: string | undefined } {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] ?? '';
    if (a === '--') return { index: -1, words: 0, name: undefined };
    if (a.startsWith('-')) {
      if (GLOBAL_WITH_VALUE.has(a)) i++;
      continue;
    }
    if (a === 'history') {
      const sub = argv[i + 1];
      if (sub === undefined || sub.startsWith('-')) throw new UsageError('history: say which report (migctl history compare)');
      if (sub !== 'compare') throw new UsageError(`history: unknown report ${JSON.stringify(sub)} (known: compare)`);
      return { index: i, words: 2, name: 'history compare' };
    }
    return { index: i, words: 1, name: a };
  }
  return { index: -1, words: 0, name: undefined };
}

function parseErrorMessage(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  // parseArgs explains how to pass a value that starts with a dash; that is noise for migctl.
  return msg.replace(/\. To specify an option argument starting with a dash use .*$/s, '').replace(/^Unknown option '([^']+)'.*$/s, "unknown flag '$1'");
}

function resolveGlobal(values: FlagValues, env: ArgsEnvironment): GlobalOptions {
  const str = (flag: string, envName: string): string | undefined => {
    const v = values[flag];
    if (typeof v === 'string') return v;
    const e = env.env[envName];
    return e !== undefined && e !== '' ? e : undefined;
  };
  const coordinator = str('coordinator', 'MIGD_COORDINATOR') ?? DEFAULT_COORDINATOR;
  const addresses = coordinator.split(',').map((a) => a.trim());
  for (const a of addresses) {
    if (!/^(?:\[[0-9a-fA-F:.]+\]|[^:\s,]+):\d{1,5}$/.test(a)) throw new UsageError(`--coordinator: ${JSON.stringify(a)} is not HOST:PORT (several: HOST:PORT,HOST:PORT)`);
  }
  const identity = str('identity', 'MIGD_IDENTITY') ?? 'operator';
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(identity)) throw new UsageError(`--identity: ${JSON.stringify(identity)} is not a certificate name`);
  const timeout = values['timeout'];
  const timeoutMs = typeof timeout === 'string' ? parseDurationMs(timeout, '--timeout', 's') : undefined;
  if (timeoutMs === 0) throw new UsageError('--timeout: must be greater than 0');
  return Object.freeze({
    coordinator,
    certDir: str('cert-dir', 'MIGD_CERT_DIR') ?? env.defaultCertDir(),
    identity,
    json: values['json'] === true,
    timeoutMs,
  });
}

/**
 * Parses migctl's arguments (without `node` and the script).
 * @throws UsageError for an unknown command or flag, a missing or extra argument, or a bad
 * global value.
 */
export function parseCommandLine(argv: readonly string[], env: ArgsEnvironment): Invocation | HelpRequest {
  const found = findCommand(argv);
  if (found.name === undefined || found.name === 'help') {
    const topic = found.name === 'help' ? argv[found.index + 1] : undefined;
    if (topic !== undefined && !isCommandName(topic) && topic !== 'history') throw new UsageError(`help: unknown command ${JSON.stringify(topic)}`);
    const asked = found.name === 'help' || argv.some((a) => a === '--help' || a === '-h');
    return { kind: 'help', command: topic === 'history' ? 'history compare' : (topic as CommandName | undefined), asked };
  }
  if (!isCommandName(found.name)) throw new UsageError(`unknown command ${JSON.stringify(found.name)} (see migctl --help)`);
  const command = found.name;
  const spec = COMMANDS[command];
  const rest = [...argv.slice(0, found.index), ...argv.slice(found.index + found.words)];
  let parsed: { values: Record<string, FlagValue>; positionals: string[] };
  try {
    parsed = parseArgs({ args: rest, options: { ...toParseArgsOptions(GLOBAL_FLAGS), ...toParseArgsOptions(spec.flags) }, allowPositionals: true, strict: true }) as typeof parsed;
  } catch (err) {
    throw new UsageError(`${command}: ${parseErrorMessage(err)} (see migctl ${command} --help)`);
  }
  if (parsed.values['help'] === true) return { kind: 'help', command, asked: true };
  const optional: readonly string[] = 'optionalArgs' in spec ? spec.optionalArgs : [];
  const required: readonly string[] = spec.args;
  if (parsed.positionals.length < required.length) {
    throw new UsageError(`${command}: missing ${required.slice(parsed.positionals.length).join(' ')} (usage: migctl ${spec.synopsis})`);
  }
  if (parsed.positionals.length > required.length + optional.length) {
    const extra = parsed.positionals.slice(required.length + optional.length);
    throw new UsageError(`${command}: unexpected argument${extra.length > 1 ? 's' : ''} ${extra.map((e) => JSON.stringify(e)).join(' ')} (usage: migctl ${spec.synopsis})`);
  }
  return { kind: 'run', command, args: parsed.positionals, flags: parsed.values, global: resolveGlobal(parsed.values, env) };
}

/** A string flag's value, or undefined. */
export function flagString(flags: FlagValues, name: string): string | undefined {
  const v = flags[name];
  if (Array.isArray(v)) return v[v.length - 1];
  return typeof v === 'string' ? v : undefined;
}

/** A boolean flag. */
export function flagBool(flags: FlagValues, name: string): boolean {
  return flags[name] === true;
}

/** A repeatable string flag's values (a single value as a one-item list). */
export function flagStrings(flags: FlagValues, name: string): string[] {
  const v = flags[name];
  if (Array.isArray(v)) return v;
  return typeof v === 'string' ? [v] : [];
}
