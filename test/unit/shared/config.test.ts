import { describe, expect, it } from 'vitest';
import { configError, configUsage, loadConfig, type ConfigSchema } from '../../../services/shared/config.js';
import { ConfigError } from '../../../services/shared/errors.js';

const schema = {
  listen: { type: 'string', default: '127.0.0.1:7000', env: 'X_LISTEN', doc: 'where to listen (default 127.0.0.1:7000)' },
  reps: { type: 'integer', default: 3, min: 1, max: 10, short: 'n', doc: 'repetitions (default 3)' },
  limit: { type: 'integer', doc: 'an optional limit' },
  quick: { type: 'boolean', env: 'X_QUICK', doc: 'quick mode' },
  parts: { type: 'list', default: ['a', 'b'], doc: 'parts (default a,b)' },
} as const satisfies ConfigSchema;

const errorOf = (f: () => unknown): ConfigError => {
  try {
    f();
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error('no error');
};

describe('config loader', () => {
  it('defaults every option and freezes the result', () => {
    const { values, positionals } = loadConfig(schema, []);
    expect(values).toEqual({ listen: '127.0.0.1:7000', reps: 3, limit: undefined, quick: false, parts: ['a', 'b'] });
    expect(Object.isFrozen(values)).toBe(true);
    expect(Object.isFrozen(values.parts)).toBe(true);
    expect(positionals).toEqual([]);
  });

  it('takes flags over the environment, converts types, and splits or repeats lists', () => {
    const { values } = loadConfig(schema, ['--listen', 'h:1', '-n', '5', '--quick', '--parts', 'c,d', '--parts', 'e', '--limit=7'], { env: { X_LISTEN: 'ignored:2', X_QUICK: '0' } });
    expect(values).toEqual({ listen: 'h:1', reps: 5, limit: 7, quick: true, parts: ['c', 'd', 'e'] });
    expect(loadConfig(schema, [], { env: { X_LISTEN: 'env:3', X_QUICK: 'true' } }).values).toMatchObject({ listen: 'env:3', quick: true });
  });

  it('refuses bad input naming the option', () => {
    expect(errorOf(() => loadConfig(schema, ['--reps', '11'])).option).toBe('--reps');
    expect(errorOf(() => loadConfig(schema, ['--reps', 'x'])).message).toMatch(/--reps: must be a whole number from 1 to 10, got "x"/);
    expect(errorOf(() => loadConfig(schema, ['--nope'])).option).toBe('--nope');
    expect(errorOf(() => loadConfig(schema, ['--listen'])).option).toBe('--listen');
    expect(errorOf(() => loadConfig(schema, ['stray'])).message).toMatch(/stray/);
    expect(errorOf(() => loadConfig(schema, [], { env: { X_QUICK: 'maybe' } })).option).toBe('--quick');
    expect(loadConfig(schema, ['target'], { positionals: 1 }).positionals).toEqual(['target']);
    expect(configError('reps', 'does not go with --quick').message).toBe('config --reps: does not go with --quick');
  });

  it('documents every option', () => {
    const help = configUsage(schema);
    for (const name of Object.keys(schema)) expect(help).toContain(`--${name}`);
    expect(help).toContain('-n, --reps N');
    expect(help).toContain('(env X_LISTEN)');
  });
});
