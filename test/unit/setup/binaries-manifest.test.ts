/**
 * Every program the code runs is in scripts/binaries.manifest, so scripts/setup installs it on a
 * fresh machine. The scanner reads the sources as text (no type information) and is strict on
 * purpose: a program name in any of the forms below must be in the manifest, or the test fails
 * naming the file and line. A false positive is fixed by listing the program (or by writing the
 * code so it does not look like a spawn), never by an exception list here.
 *
 * TypeScript forms:
 *   - the first argument of spawn, spawnSync, execFile, execFileSync, exec, run, sh, command,
 *     requireTool, findExecutable (e.g. `runner.run('tc', …)`, `host.spawn('sleep', …)`,
 *     `promisify(execFile)('cc', …)`, `spawn(opts.qemu ?? 'qemu-system-x86_64', …)`), and the
 *     second argument of runChecked;
 *   - the program after `'netns', 'exec', <ns>,` in an argument list (`ip netns exec ns nft …`);
 *   - the commands of a `sh`/`bash` `-c` script given as a literal;
 *   - binary-name defaults: a literal assigned to a name like `python`, `bin`, `*_BIN`,
 *     `compiler`, `cmd`, `QEMU_SYSTEM` (also default parameters and `?? 'x'` fallbacks), and the
 *     literals of candidate lists (`candidates = […]`, `for (const name of ['cc', 'gcc'])`);
 *   - any absolute path of a program (`'/usr/sbin/nats-server'`, `'/bin/sh'`).
 * Shell scripts (scripts/setup, scripts/gen, …): the first word of every simple command.
 *
 * test/unit is scanned too (some unit tests compile with `cc`), except this file, whose synthetic
 * snippets name programs that are deliberately not in the manifest.
 */
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { basename, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const repo = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..', '..');
const self = fileURLToPath(import.meta.url);

interface ManifestEntry {
  readonly binary: string;
  readonly pkg: string;
  readonly suite: string;
  readonly check: string;
  readonly line: number;
}

/** The manifest's suites: where setup takes a package from, or why it installs nothing. */
const SUITES = new Set(['bookworm', 'bookworm-backports', 'required', 'prerequisite']);

function parseManifest(text: string): ManifestEntry[] {
  const out: ManifestEntry[] = [];
  text.split('\n').forEach((raw, i) => {
    const l = raw.replace(/#.*$/, '').trim();
    if (!l) return;
    const m = /^(\S+)\s+(\S+)\s+(\S+)\s*(.*)$/.exec(l);
    if (!m) throw new Error(`binaries.manifest:${i + 1}: expected "binary package suite [check arguments]": ${raw}`);
    out.push({ binary: m[1]!, pkg: m[2]!, suite: m[3]!, check: m[4]!, line: i + 1 });
  });
  return out;
}

/** A program found in a source file. */
interface Found {
  readonly program: string;
  readonly line: number;
  readonly how: string;
}

const CALLEES = ['spawn', 'spawnSync', 'execFile', 'execFileSync', 'exec', 'run', 'sh', 'command', 'requireTool', 'findExecutable'];
/** Variable names whose literal value is a program (a default binary). */
const BINARY_NAME = /^(?:bin|binary|python\d*|compiler|cmd|program|exe|qemu_system|\w*_bin|\w*Bin|\w*Binary|\w*Python)$/i;
const CANDIDATE_LIST = /^(?:candidates?|compilers?|bins|binaries|programs|tools)$/i;
const PROGRAM = /^[a-z][a-z0-9._+-]*$/;
const PROGRAM_PATH = /^\/(?:usr\/)?(?:local\/)?s?bin\/([a-z][a-z0-9._+-]*)$/;

/** Shell words that are no programs: keywords and builtins of bash and dash. */
const SHELL_WORDS = new Set(
  ('if then else elif fi case esac for while until do done in function select time { } ! [[ ]] ' +
    'alias bg bind break builtin caller cd command compgen complete continue declare dirs disown echo enable eval exec exit export ' +
    'false fc fg getopts hash help history jobs let local logout mapfile popd printf pushd pwd read readarray readonly return set shift ' +
    'shopt source suspend test [ times trap true type typeset ulimit umask unalias unset wait .').split(/\s+/),
);

function lineOf(src: string, index: number): number {
  let n = 1;
  for (let i = 0; i < index; i++) if (src.charCodeAt(i) === 10) n++;
  return n;
}

/** The string literals ('…', "…", `…` without ${}) of an expression's text, env keys left out. */
function literals(expr: string): string[] {
  const text = expr.replace(/env\[\s*['"][^'"]*['"]\s*\]/g, '');
  return [...text.matchAll(/'([^'\\\n]*)'|"([^"\\\n]*)"|`([^`$\\]*)`/g)].map((m) => m[1] ?? m[2] ?? m[3] ?? '');
}

/** A literal that names a program: a bare name or an absolute path in a bin folder. */
function programOf(lit: string): string | undefined {
  const p = PROGRAM_PATH.exec(lit);
  if (p) return p[1];
  return PROGRAM.test(lit) ? lit : undefined;
}

/** The text of the call's argument number `n` (0-based) starting after `(` at `open`. */
function argument(src: string, open: number, n: number): string | undefined {
  let depth = 0;
  let start = open;
  let idx = 0;
  let quote: string | undefined;
  for (let i = open; i < src.length; i++) {
    const c = src[i]!;
    if (quote) {
      if (c === '\\') i++;
      else if (c === quote) quote = undefined;
      continue;
    }
    if (c === "'" || c === '"' || c === '`') quote = c;
    else if (c === '(' || c === '[' || c === '{') depth++;
    else if (c === ')' || c === ']' || c === '}') {
      if (depth === 0) return idx === n ? src.slice(start, i) : undefined;
      depth--;
    } else if (c === ',' && depth === 0) {
      if (idx === n) return src.slice(start, i);
      idx++;
      start = i + 1;
    }
  }
  return undefined;
}

/**
 * A shell text with its quoted literals replaced by `Q` and comments dropped, so separators inside
 * them do not split commands; command substitutions inside double quotes are kept, as commands.
 */
function flattenShell(s: string): string {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c === "'") {
      const end = s.indexOf("'", i + 1);
      i = end < 0 ? s.length : end;
      out += 'Q';
    } else if (c === '"') {
      let j = i + 1;
      for (; j < s.length && s[j] !== '"'; j++) {
        if (s[j] === '\\') j++;
        else if (s[j] === '$' && s[j + 1] === '(') {
          const end = closingParen(s, j + 1);
          out += ` ; ${flattenShell(s.slice(j + 2, end))} ; `;
          j = end;
        }
      }
      // A lone "$var" stays a word: it may be run as a command.
      const body = s.slice(i + 1, j);
      out += /^\$\{?\w+\}?$/.test(body) ? body : 'Q';
      i = j;
    } else if (c === '#' && (i === 0 || /\s/.test(s[i - 1]!))) {
      const end = s.indexOf('\n', i);
      i = end < 0 ? s.length : end - 1;
    } else out += c;
  }
  return out;
}

/** Index of the `)` closing the `(` at `open`, skipping quoted text. */
function closingParen(s: string, open: number): number {
  let depth = 0;
  for (let i = open; i < s.length; i++) {
    const c = s[i]!;
    if (c === "'") i = Math.max(i, s.indexOf("'", i + 1));
    else if (c === '(') depth++;
    else if (c === ')' && --depth === 0) return i;
  }
  return s.length;
}

/** The programs of a shell script text (first word of every simple command). */
function scanShell(src: string, lineBase = 1): Found[] {
  const out: Found[] = [];
  const functions = new Set([...src.matchAll(/^\s*(?:function\s+)?([\w-]+)\s*\(\)\s*\{/gm)].map((m) => m[1]!));
  // `protoc=${PROTOC:-protoc}` … `"$protoc" -I.`: a variable run as a command, with its default.
  const defaults = new Map([...src.matchAll(/^\s*(\w+)=\$\{\w+:-([^}\s]+)\}/gm)].map((m) => [m[1]!, m[2]!]));
  // Heredoc bodies are data (often another language's code), not commands.
  const lines: string[] = [];
  let heredoc: string | undefined;
  for (const raw of src.split('\n')) {
    if (heredoc !== undefined) {
      if (raw.trim() === heredoc) heredoc = undefined;
      lines.push('');
      continue;
    }
    lines.push(raw);
    heredoc = /<<-?\s*['"]?(\w+)['"]?/.exec(raw)?.[1];
  }
  // One line at a time: a quoted string spanning lines would be misread (setup has none).
  let lineNo = lineBase;
  for (const line of lines) {
    // Arithmetic (`for ((j = 0; j < n; j++))`, `$((…))`) and case labels (`--quiet) …`) hold no commands.
    const text = flattenShell(line)
      .replace(/\(\((?:[^()]|\([^()]*\))*\)\)/g, ' ')
      .replace(/^\s*[^\s()]+(?:\s*\|\s*[^\s()]+)*\)(?=\s|$)/, ' ');
    for (const seg of text.split(/\|\||&&|;;|[|;&`]|\$\(|\(|\)|\{|\}|\bthen\b|\bdo\b|\belse\b|!/)) {
      const words = seg.trim().split(/\s+/).filter(Boolean);
      // Leading assignments (FOO=bar cmd) and redirections are no commands.
      while (words.length && (/^\w+=/.test(words[0]!) || /^\d*[<>]/.test(words[0]!))) words.shift();
      let w = words[0];
      const variable = /^\$\{?(\w+)\}?$/.exec(w ?? '')?.[1];
      if (variable) w = defaults.get(variable);
      if (!w || SHELL_WORDS.has(w) || functions.has(w)) continue;
      const prog = programOf(w);
      if (prog && !SHELL_WORDS.has(prog)) out.push({ program: prog, line: lineNo, how: 'shell command' });
    }
    // Absolute program paths anywhere outside comments (`plugin=${X:-/usr/bin/grpc_python_plugin}`).
    for (const m of line.replace(/(^|\s)#.*$/, '').matchAll(/(?:^|[\s'"=:-])(\/(?:usr\/)?(?:local\/)?s?bin\/[a-z][a-z0-9._+-]*)/g)) {
      const prog = programOf(m[1]!);
      if (prog) out.push({ program: prog, line: lineNo, how: 'program path' });
    }
    lineNo++;
  }
  return out;
}

/** The programs a TypeScript source runs, by the forms listed at the top of this file. */
function scanTypeScript(src: string): Found[] {
  const out: Found[] = [];
  const add = (lit: string, index: number, how: string): void => {
    const program = programOf(lit);
    if (program) out.push({ program, line: lineOf(src, index), how });
  };
  // Calls: the first argument's literals (covers `x ?? 'default'`), or runChecked's second.
  const callRe = new RegExp(`\\b(${CALLEES.join('|')}|runChecked)\\)?\\s*\\(`, 'g');
  for (const m of src.matchAll(callRe)) {
    const open = m.index + m[0].length;
    // A declaration (`function run(cmd: string…`, `spawn(file, args) {`) is not a call.
    if (/(?:function|async|private|public)\s+$/.test(src.slice(Math.max(0, m.index - 20), m.index))) continue;
    // RegExp#exec on a pattern (`re.exec('…')`, `/x/.exec(…)`) runs nothing.
    if (m[1] === 'exec' && /(?:\/|\b(?:re|\w*RE|\w*Re|\w*[pP]attern|\w*[rR]egex))\s*\.\s*$/.test(src.slice(Math.max(0, m.index - 40), m.index))) continue;
    const arg = argument(src, open, m[1] === 'runChecked' ? 1 : 0);
    // Not a program: a declaration's parameter (`cmd: string`), an array or object argument.
    if (arg === undefined || /^\s*[\w$]+\s*:/.test(arg) || /^\s*[[{]/.test(arg)) continue;
    for (const lit of literals(arg)) add(lit, m.index, `${m[1]}(…)`);
    // An `sh -c '<script>'` / `bash … -c '<script>'` call: the script's commands.
    const first = literals(arg)[0];
    if (first && /^(?:\/(?:usr\/)?bin\/)?(?:ba)?sh$/.test(first)) {
      const args = argument(src, open, 1) ?? '';
      const script = /['"]-c['"]\s*,\s*(['"`])((?:(?!\1)[^\\]|\\.)*)\1/.exec(args);
      if (script) for (const f of scanShell(script[2]!)) add(f.program, m.index, `${first} -c script`);
    }
  }
  // ip netns exec <ns> <program>
  for (const m of src.matchAll(/['"]netns['"]\s*,\s*['"]exec['"]\s*,\s*[^,\]]+,\s*(['"])([^'"]+)\1/g)) add(m[2]!, m.index, 'ip netns exec');
  // Defaults: `python = 'python3'`, `const NATS_BIN = env[…] ?? '/usr/sbin/nats-server'`: a value
  // that starts with a literal, or whose last `??`/`||` alternative does.
  for (const m of src.matchAll(/\b([A-Za-z_$][\w$]*)\s*(?::\s*[\w.| ]+)?\s*(?:\?\?=|=(?![=>]))\s*([^;\n]*)/g)) {
    const name = m[1]!;
    if (BINARY_NAME.test(name)) {
      const last = m[2]!.split(/\?\?|\|\|/).pop()!.trim();
      const lit = /^(['"`])([^'"`$]*)\1/.exec(last);
      if (lit) add(lit[2]!, m.index, `default ${name}`);
    } else if (CANDIDATE_LIST.test(name)) for (const lit of literals(m[2]!)) add(lit, m.index, `candidate in ${name}`);
  }
  // `for (const name of ['cc', 'gcc'])` whose body looks the name up or runs it.
  for (const m of src.matchAll(/\bfor\s*\(\s*(?:const|let)\s+(\w+)\s+of\s+\[([^\]]*)\]\s*\)/g)) {
    const body = src.slice(m.index + m[0].length, m.index + m[0].length + 400);
    if (new RegExp(`\\b(?:${CALLEES.join('|')})\\)?\\s*\\(\\s*${m[1]}\\b`).test(body)) for (const lit of literals(m[2]!)) add(lit, m.index, `candidate ${m[1]}`);
  }
  // Absolute program paths anywhere.
  for (const m of src.matchAll(/(['"`])(\/(?:usr\/)?(?:local\/)?s?bin\/[a-z][a-z0-9._+-]*)\1/g)) add(m[2]!, m.index, 'program path');
  return out;
}

function walk(dir: string, out: string[] = []): string[] {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) {
      // Generated gRPC code runs nothing.
      if (e.name !== 'node_modules' && p !== join(repo, 'services', 'shared', 'gen')) walk(p, out);
    } else out.push(p);
  }
  return out;
}

function isShellScript(path: string): boolean {
  if (path.endsWith('.sh')) return true;
  if (/\.[a-z]+$/.test(basename(path))) return false;
  return readFileSync(path, 'utf8').slice(0, 64).startsWith('#!/usr/bin/env bash') || readFileSync(path, 'utf8').startsWith('#!/bin/sh');
}

/** Every source the project runs or tests with, and what each one runs. */
function scanRepo(): Map<string, Found[]> {
  const files = ['services', 'stress', 'scripts', 'test', 'clients', '.ci'].flatMap((d) => walk(join(repo, d)));
  const result = new Map<string, Found[]>();
  for (const f of files) {
    if (f === self || !statSync(f).isFile()) continue;
    const rel = relative(repo, f);
    if (f.endsWith('.ts')) result.set(rel, scanTypeScript(readFileSync(f, 'utf8')));
    else if (isShellScript(f)) result.set(rel, scanShell(readFileSync(f, 'utf8')));
  }
  return result;
}

const manifestText = readFileSync(join(repo, 'scripts', 'binaries.manifest'), 'utf8');

describe('scripts/binaries.manifest', () => {
  it('lists every program the code runs, with its Debian package', () => {
    const listed = new Set(parseManifest(manifestText).map((e) => basename(e.binary)));
    const missing: string[] = [];
    for (const [file, found] of scanRepo()) for (const f of found) if (!listed.has(f.program)) missing.push(`${f.program} (${file}:${f.line}, ${f.how})`);
    expect(missing, 'programs run by the code but missing from scripts/binaries.manifest (add "binary package suite check")').toEqual([]);
  });

  it('is well formed: known suites, one line per binary and package, QEMU from bookworm-backports', () => {
    const entries = parseManifest(manifestText);
    for (const e of entries) expect(SUITES.has(e.suite), `line ${e.line}: suite ${e.suite}`).toBe(true);
    const pairs = entries.map((e) => `${e.binary} ${e.pkg}`);
    expect(pairs.filter((b, i) => pairs.indexOf(b) !== i)).toEqual([]);
    // A package comes from one suite only (setup installs it once).
    const suites = new Map<string, Set<string>>();
    for (const e of entries) suites.set(e.pkg, (suites.get(e.pkg) ?? new Set()).add(e.suite));
    expect([...suites].filter(([, s]) => s.size > 1).map(([p]) => p)).toEqual([]);
    const qemu = entries.find((e) => e.binary === 'qemu-system-x86_64');
    expect(qemu).toMatchObject({ pkg: 'qemu-system-x86', suite: 'bookworm-backports' });
    expect(entries.find((e) => e.binary === 'qemu-img')).toMatchObject({ pkg: 'qemu-utils', suite: 'bookworm-backports' });
    expect(entries.find((e) => e.binary === 'nft')).toMatchObject({ pkg: 'nftables', suite: 'bookworm' });
  });

  it('would catch a new program: the scanner finds each form in synthetic sources', () => {
    const names = (src: string): string[] => [...new Set(scanTypeScript(src).map((f) => f.program))];
    expect(names(`await this.runner.run('nft', ['-f', '-'], { input });`)).toEqual(['nft']);
    expect(names(`const r = await runChecked(this.runner, 'frobctl', ['x']);`)).toEqual(['frobctl']);
    expect(names(`host.spawn('frob-daemon', ['-d'], { stdio: 'ignore' })`)).toEqual(['frob-daemon']);
    expect(names(`await promisify(execFile)('frobcc', ['-O2'])`)).toEqual(['frobcc']);
    expect(names(`spawn(opts.frob ?? 'frob-x', args)`)).toEqual(['frob-x']);
    expect(names(`runner.run('ip', ['netns', 'exec', ns, 'frobtables', '-w', '5'])`)).toEqual(['ip', 'frobtables']);
    expect(names(`static async start(netns: string, frobPython = 'python9') {}`)).toEqual(['python9']);
    expect(names(`const FROB_BIN = process.env['FROB_BIN'] ?? '/usr/sbin/frobd';`)).toEqual(['frobd']);
    expect(names(`const candidates = x ? [x] : ['frob-legacy-restore', 'frob-restore'];`)).toEqual(['frob-legacy-restore', 'frob-restore']);
    expect(names(`for (const name of ['frobcc', 'frobgcc']) {\n const path = await findExecutable(name);`)).toEqual(['frobcc', 'frobgcc']);
    expect(names(`for (const name of ['r1', 'r2']) await create(name);`)).toEqual([]);
    expect(names(`spawn('/bin/sh', ['-c', 'frobmask 077 && exec "$0" "$@"', file])`)).toEqual(['sh', 'frobmask']);
    expect(names(`run('bash', ['-o', 'pipefail', '-c', 'frob-deb --x "$1" | frobtar -x', '_', deb])`)).toEqual(['bash', 'frob-deb', 'frobtar']);
    // Not programs: method calls on non-literals, regex exec, declarations.
    expect(names(`const m = RE.exec(line); void this.run(events); function run(cmd: string) {}`)).toEqual([]);
    // And the whole-repository check would fail on it: 'frobtables' is not in the manifest.
    const listed = new Set(parseManifest(manifestText).map((e) => basename(e.binary)));
    expect(names(`await runner.run('frobtables', ['-f', '-'])`).filter((p) => !listed.has(p))).toEqual(['frobtables']);
    expect(listed.has('nft')).toBe(true);
  });

  it('scans shell scripts: first words of commands, not keywords, builtins, functions or heredocs', () => {
    const src = [
      'set -euo pipefail',
      'say() { echo "x"; }',
      'if [ -f x ]; then frobnicate --all | frobsort -u; fi',
      'lock=$(frobsum package-lock.json | cut -c1-16)',
      'X=1 frobenv run',
      '"$python" - <<\'PY\'',
      'import sys',
      'PY',
      'die() { echo "$*" >&2; exit 1; }',
      'say done  # frobcomment',
      'frobc=${FROBC:-frobc}',
      '"$frobc" -I. --out="$out" "$x"',
      '[ "$(frobuname -s)" = Linux ] || die "needs Linux (use frobwords; this is $(uname -m))"',
      'plugin=${FROB_PLUGIN:-/usr/bin/frob_plugin}  # not /usr/bin/frobcomment',
      'for ((j = 0; j < $1; j++)); do n=$((j + 1)); done',
      'case "$a" in',
      '  frob-label|other) why=1 ;;',
      '  *) frobdefault ;;',
      'esac',
    ].join('\n');
    expect(scanShell(src).map((f) => f.program)).toEqual(['frobnicate', 'frobsort', 'frobsum', 'cut', 'frobenv', 'frobc', 'frobuname', 'uname', 'frob_plugin', 'frobdefault']);
  });
});
