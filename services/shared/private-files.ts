/**
 * State is private to the user a daemon runs as: folders 0700, files 0600 (history database and
 * its WAL, NATS store, certificates and keys, node state). Daemons set a umask of 077 at start so
 * whatever they (and the QEMU and nats-server processes they spawn) create is private; these
 * helpers also tighten files that already existed with wider modes. Folders that already existed
 * are left alone (a database in /tmp must not chmod /tmp).
 */
import { chmodSync, closeSync, existsSync, mkdirSync, openSync } from 'node:fs';

/** Folder mode of migd state. */
export const PRIVATE_DIR_MODE = 0o700;
/** File mode of migd state. */
export const PRIVATE_FILE_MODE = 0o600;

/** Makes new files and folders of this process (and its children) private: umask 077. */
export function restrictUmask(): void {
  process.umask(0o077);
}

/** Creates `dir` (and missing parents) as 0700; an existing `dir` made by migd is set to 0700 too. */
export function ensurePrivateDir(dir: string, opts: { tighten?: boolean } = {}): void {
  const existed = existsSync(dir);
  mkdirSync(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
  if (!existed || opts.tighten) chmodSync(dir, PRIVATE_DIR_MODE);
}

/** Creates `file` empty as 0600 unless present, and sets an existing one to 0600. */
export function ensurePrivateFile(file: string): void {
  closeSync(openSync(file, 'a', PRIVATE_FILE_MODE));
  chmodSync(file, PRIVATE_FILE_MODE);
}

/** Sets each existing file to 0600 (missing ones are skipped). */
export function restrictFiles(files: readonly string[]): void {
  for (const f of files) if (existsSync(f)) chmodSync(f, PRIVATE_FILE_MODE);
}
