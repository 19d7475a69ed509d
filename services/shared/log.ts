/**
 * Structured logging: one JSON object per line on stderr, with a component name and fields.
 * Level from MIGD_LOG_LEVEL (debug|info|warn|error, default info). Tests set it to `warn`.
 */

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
const order: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  child(fields: Record<string, unknown>): Logger;
}

function envLevel(): LogLevel {
  const v = process.env['MIGD_LOG_LEVEL'];
  return v === 'debug' || v === 'info' || v === 'warn' || v === 'error' ? v : 'info';
}

function serialize(v: unknown): unknown {
  if (v instanceof Error) {
    return { name: v.name, message: v.message, stack: v.stack, cause: v.cause === undefined ? undefined : serialize(v.cause) };
  }
  if (typeof v === 'bigint') return v.toString();
  return v;
}

/** Creates a logger writing JSON lines to `sink` (stderr by default). */
export function createLogger(
  component: string,
  base: Record<string, unknown> = {},
  sink: (line: string) => void = (line) => process.stderr.write(line + '\n'),
  level: LogLevel = envLevel(),
): Logger {
  const emit = (lvl: LogLevel, msg: string, fields?: Record<string, unknown>): void => {
    if (order[lvl] < order[level]) return;
    const rec: Record<string, unknown> = { t: new Date().toISOString(), level: lvl, component, msg, ...base };
    if (fields) for (const [k, v] of Object.entries(fields)) rec[k] = serialize(v);
    sink(JSON.stringify(rec));
  };
  return {
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
    child: (fields) => createLogger(component, { ...base, ...fields }, sink, level),
  };
}
