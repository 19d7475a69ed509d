/**
 * The one command-line loader (STYLE 6, 17): `node:util` parseArgs in strict mode plus a small
 * schema. Each option is declared once with its type, default, range, environment variable and a
 * line of documentation; the result is typed, fully defaulted and frozen, and every bad value is
 * refused with a ConfigError naming the option (`--name`). Bad combinations are the caller's to
 * check, after loading, with {@link configError}.
 */
import { parseArgs } from 'node:util';
import { ConfigError } from './errors.js';

interface Common {
  /** One line saying what the option does and its default, for `--help`. */
  readonly doc: string;
  /** Environment variable read when the flag is absent. */
  readonly env?: string;
  /** One-letter alias. */
  readonly short?: string;
}
export type OptionSpec =
  | (Common & { readonly type: 'string'; readonly default?: string })
  | (Common & { readonly type: 'integer'; readonly default?: number; readonly min?: number; readonly max?: number })
  | (Common & { readonly type: 'boolean'; readonly default?: boolean })
  /** Comma-separated, or the flag repeated. */
  | (Common & { readonly type: 'list'; readonly default?: readonly string[] });
export type ConfigSchema = Readonly<Record<string, OptionSpec>>;

type ValueOf<O extends OptionSpec> = O extends { type: 'string' } ? string : O extends { type: 'integer' } ? number : O extends { type: 'boolean' } ? boolean : readonly string[];
/** The loaded values: options with a default (and booleans) are always set, the rest may be undefined. */
export type ConfigValues<S extends ConfigSchema> = {
  readonly [K in keyof S]: S[K] extends { default: unknown } | { type: 'boolean' } ? ValueOf<S[K]> : ValueOf<S[K]> | undefined;
};

export interface LoadedConfig<S extends ConfigSchema> {
  readonly values: ConfigValues<S>;
  /** Arguments that are not options, when `positionals` allows them. */
  readonly positionals: readonly string[];
}

/** A ConfigError for `option` (a schema key), named as its flag. */
export function configError(option: string, message: string): ConfigError {
  return new ConfigError(`--${option}`, message);
}

function convert(name: string, spec: OptionSpec, raw: string | boolean | (string | boolean)[]): unknown {
  switch (spec.type) {
    case 'boolean':
      if (typeof raw === 'boolean') return raw;
      if (raw === 'true' || raw === '1') return true;
      if (raw === 'false' || raw === '0' || raw === '') return false;
      throw configError(name, `must be true or false, got "${String(raw)}"`);
    case 'integer': {
      const text = String(raw);
      const n = Number(text);
      const min = spec.min ?? Number.MIN_SAFE_INTEGER;
      const max = spec.max ?? Number.MAX_SAFE_INTEGER;
      if (text.trim() === '' || !Number.isInteger(n) || n < min || n > max) throw configError(name, `must be a whole number from ${min} to ${max}, got "${text}"`);
      return n;
    }
    case 'list':
      return Object.freeze((Array.isArray(raw) ? raw : [raw]).flatMap((v) => String(v).split(',')).map((v) => v.trim()).filter(Boolean));
    case 'string':
      return String(raw);
  }
}

/**
 * Parses `argv` (and the environment) against `schema`.
 * @throws ConfigError naming the option: unknown flags, missing or malformed values, stray
 *   arguments (unless `positionals` allows that many)
 */
export function loadConfig<S extends ConfigSchema>(schema: S, argv: readonly string[], opts: { env?: NodeJS.ProcessEnv; positionals?: number } = {}): LoadedConfig<S> {
  const env = opts.env ?? {};
  const options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }> = {};
  for (const [name, spec] of Object.entries(schema)) {
    options[name] = { type: spec.type === 'boolean' ? 'boolean' : 'string', ...(spec.type === 'list' ? { multiple: true } : {}), ...(spec.short ? { short: spec.short } : {}) };
  }
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args: [...argv], options, strict: true, allowPositionals: (opts.positionals ?? 0) > 0 });
  } catch (err) {
    // parseArgs names the flag in its message ("Unknown option '--x'", "Option '--y <value>' argument missing").
    const flag = /'(-{1,2}[\w-]+)/.exec((err as Error).message)?.[1] ?? 'arguments';
    throw new ConfigError(flag, (err as Error).message.replace(/\. To specify a positional argument.*$/s, ''));
  }
  if (parsed.positionals.length > (opts.positionals ?? 0)) throw new ConfigError('arguments', `unexpected argument "${parsed.positionals[opts.positionals ?? 0]}"`);
  const values: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(schema)) {
    const given = parsed.values[name];
    const fromEnv = spec.env !== undefined ? env[spec.env] : undefined;
    if (given !== undefined) values[name] = convert(name, spec, given);
    else if (fromEnv !== undefined && fromEnv !== '') values[name] = convert(name, spec, fromEnv);
    else if (spec.type === 'list') values[name] = spec.default ? Object.freeze([...spec.default]) : undefined;
    else values[name] = spec.default ?? (spec.type === 'boolean' ? false : undefined);
  }
  return Object.freeze({ values: Object.freeze(values) as ConfigValues<S>, positionals: Object.freeze([...parsed.positionals]) });
}

/** `--help` text: one line per option with its documentation. */
export function configUsage(schema: ConfigSchema): string {
  const rows = Object.entries(schema).map(([name, spec]) => {
    const flag = `${spec.short ? `-${spec.short}, ` : ''}--${name}${spec.type === 'boolean' ? '' : spec.type === 'integer' ? ' N' : ' VALUE'}`;
    return [flag, `${spec.doc}${spec.env ? ` (env ${spec.env})` : ''}`] as const;
  });
  const width = Math.max(...rows.map(([f]) => f.length));
  return rows.map(([f, d]) => `  ${f.padEnd(width)}  ${d}`).join('\n');
}
