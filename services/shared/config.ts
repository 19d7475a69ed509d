/**
 * The one command-line loader (STYLE 6, 17): `node:util` parseArgs in strict mode plus a small
 * schema. Each option is declared once with its type, default, range, environment variable and a
 * line of documentation; the result is typed, fully defaulted and frozen, and every bad value is
 * refused with a ConfigError naming the option (`--name`). Bad combinations are the caller's to
 * check, after loading, with {@link configError}.
 */
import { readFileSync } from 'node:fs';
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
  /** The options set by a flag or the environment (the others hold their defaults). */
  readonly given: ReadonlySet<keyof S & string>;
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
  const set = new Set<keyof S & string>();
  for (const [name, spec] of Object.entries(schema)) {
    const given = parsed.values[name];
    const fromEnv = spec.env !== undefined ? env[spec.env] : undefined;
    if (given !== undefined) values[name] = convert(name, spec, given);
    else if (fromEnv !== undefined && fromEnv !== '') values[name] = convert(name, spec, fromEnv);
    else if (spec.type === 'list') values[name] = spec.default ? Object.freeze([...spec.default]) : undefined;
    else values[name] = spec.default ?? (spec.type === 'boolean' ? false : undefined);
    if (given !== undefined || (fromEnv !== undefined && fromEnv !== '')) set.add(name);
  }
  return Object.freeze({ values: Object.freeze(values) as ConfigValues<S>, positionals: Object.freeze([...parsed.positionals]), given: set });
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

/** `heart-beat-ms` → `heartBeatMs`. */
type Camel<F extends string> = F extends `${infer A}-${infer B}` ? `${A}${Capitalize<Camel<B>>}` : F;
/** The camelCase keys of a schema's options, as a JSON configuration file writes them. */
export type OptionKey<S extends ConfigSchema> = Camel<keyof S & string>;
/** Option values by camelCase key, from any source, not yet checked or defaulted. */
export type RawOptions<S extends ConfigSchema> = Partial<Record<OptionKey<S>, unknown>>;

/** The flag of a camelCase option key (`heartbeatMs` → `heartbeat-ms`). */
export function flagOf(key: string): string {
  return key.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
}

function keyOf(flag: string): string {
  return flag.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/**
 * A daemon's options from three sources, later ones winning: a JSON file of camelCase keys (named
 * by the `fileOption` flag or its environment variable), the environment, the flags. Returns
 * the values that were given, by camelCase key, for the daemon's resolver to default and check
 * with {@link optionReader}; flags and environment values are already converted and in range.
 * @throws ConfigError naming the flag (or the file's key): unknown options, malformed values,
 *   an unreadable file
 */
export function loadLayeredOptions<S extends ConfigSchema>(schema: S, argv: readonly string[], opts: { env?: NodeJS.ProcessEnv; fileOption: keyof S & string }): RawOptions<S> {
  const { values, given } = loadConfig(schema, argv, { env: opts.env ?? {} });
  const raw: Record<string, unknown> = {};
  const file = values[opts.fileOption];
  if (typeof file === 'string' && file !== '') {
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(file, 'utf8'));
    } catch (err) {
      throw configError(opts.fileOption, `cannot read ${file}: ${(err as Error).message}`);
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw configError(opts.fileOption, `${file} must hold a JSON object`);
    for (const [k, v] of Object.entries(parsed)) {
      if (!(flagOf(k) in schema) || flagOf(k) === opts.fileOption) throw new ConfigError(k, `unknown option in ${file}`);
      raw[k] = v;
    }
  }
  for (const flag of given) if (flag !== opts.fileOption) raw[keyOf(flag)] = values[flag];
  return raw as RawOptions<S>;
}

/** Reads raw options (strings, numbers, booleans or lists, from any source) against their schema. */
export interface OptionReader<S extends ConfigSchema> {
  /** A string; `dflt` (else the schema's default, else '') when absent or empty. */
  str(key: OptionKey<S>, dflt?: string): string;
  /** A whole number within the schema's range; `dflt` (else the schema's default) when absent. */
  int(key: OptionKey<S>, dflt?: number): number;
  /** true/false (also "true"/"1"/"false"/"0"); `dflt` (else the schema's default, else false) when absent. */
  bool(key: OptionKey<S>, dflt?: boolean): boolean;
  /** A list (an array, or a comma-separated string); `dflt` (else the schema's default, else []) when absent or empty. */
  list(key: OptionKey<S>, dflt?: readonly string[]): readonly string[];
  /** Whether the option was given at all. */
  has(key: OptionKey<S>): boolean;
}

/**
 * Typed access to `raw` with the defaults and ranges of `schema`.
 * @throws ConfigError naming the flag when a value has the wrong type or is out of range
 */
export function optionReader<S extends ConfigSchema>(schema: S, raw: RawOptions<S>): OptionReader<S> {
  const get = (key: string): unknown => {
    const v = (raw as Record<string, unknown>)[key];
    return v === '' ? undefined : v;
  };
  const spec = (key: string): OptionSpec => {
    const s = schema[flagOf(key)];
    if (s === undefined) throw new Error(`no option ${key} in the schema`);
    return s;
  };
  const fail = (key: string, message: string): ConfigError => configError(flagOf(key), message);
  return {
    str(key, dflt) {
      const v = get(key);
      const d = spec(key);
      if (v === undefined) return dflt ?? (d.type === 'string' ? d.default : undefined) ?? '';
      if (typeof v !== 'string') throw fail(key, `must be a string, got ${JSON.stringify(v)}`);
      return v;
    },
    int(key, dflt) {
      const v = get(key);
      const d = spec(key);
      if (d.type !== 'integer') throw new Error(`option ${key} is not an integer`);
      if (v === undefined) {
        const x = dflt ?? d.default;
        if (x === undefined) throw fail(key, 'is required');
        return x;
      }
      const n = typeof v === 'number' ? v : typeof v === 'string' && v.trim() !== '' ? Number(v) : NaN;
      const min = d.min ?? Number.MIN_SAFE_INTEGER;
      const max = d.max ?? Number.MAX_SAFE_INTEGER;
      if (!Number.isInteger(n) || n < min || n > max) throw fail(key, `must be a whole number from ${min} to ${max}, got ${JSON.stringify(v)}`);
      return n;
    },
    bool(key, dflt) {
      const v = get(key);
      const d = spec(key);
      if (v === undefined) return dflt ?? (d.type === 'boolean' ? d.default : undefined) ?? false;
      if (v === true || v === 'true' || v === '1') return true;
      if (v === false || v === 'false' || v === '0') return false;
      throw fail(key, `must be true or false, got ${JSON.stringify(v)}`);
    },
    list(key, dflt) {
      const v = get(key);
      const d = spec(key);
      const fallback = dflt ?? (d.type === 'list' ? d.default : undefined) ?? [];
      if (v === undefined) return fallback;
      const items: unknown[] | undefined = Array.isArray(v) ? v : typeof v === 'string' ? v.split(',') : undefined;
      if (items === undefined || items.some((x) => typeof x !== 'string')) throw fail(key, 'must be a string or a list of strings');
      const out = (items as string[]).map((x) => x.trim()).filter(Boolean);
      return out.length > 0 ? out : fallback;
    },
    has(key) {
      return get(key) !== undefined;
    },
  };
}
