/**
 * Runs TypeScript from this repo in a separate, killable Node process (a stand-in node daemon):
 * every `.ts` file under services/ and the given entry is transpiled with the TypeScript compiler
 * API (no bundler; relative `.js` imports resolve as they are) into a temp dir, then run with node.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const REPO = fileURLToPath(new URL('../..', import.meta.url));

async function tsFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const ent of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, ent.name);
    if (ent.isDirectory()) out.push(...(await tsFiles(p)));
    else if (ent.name.endsWith('.ts') && !ent.name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

/** Transpiles services/ plus `entry` (repo-relative) into `outDir`; returns the entry's .js path. */
export async function transpileForChild(entry: string, outDir: string): Promise<string> {
  const files = [...(await tsFiles(join(REPO, 'services', 'node'))), ...(await tsFiles(join(REPO, 'services', 'shared'))), join(REPO, entry)];
  for (const file of files) {
    const src = await readFile(file, 'utf8');
    const { outputText } = ts.transpileModule(src, {
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, verbatimModuleSyntax: true },
      fileName: file,
    });
    const dest = join(outDir, relative(REPO, file)).replace(/\.ts$/, '.js');
    await mkdir(dirname(dest), { recursive: true });
    await writeFile(dest, outputText);
  }
  await writeFile(join(outDir, 'package.json'), '{"type":"module"}\n');
  return join(outDir, entry.replace(/\.ts$/, '.js'));
}

/** Starts `node script args`, resolving with the child and its first stdout line parsed as JSON. */
export async function startChild(script: string, args: string[]): Promise<{ child: ChildProcess; first: unknown }> {
  const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const first = await new Promise<unknown>((res, rej) => {
    let buf = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl >= 0) res(JSON.parse(buf.slice(0, nl)));
    });
    child.once('exit', (code) => rej(new Error(`child exited (${String(code)}) before reporting: ${stderr.slice(-2000)}`)));
  });
  return { child, first };
}
