/** Locations inside the migd checkout, valid both from sources (vitest) and from dist/. */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

let cached: string | undefined;

/** The repository root: the nearest ancestor holding migd's package.json. */
export function repoRoot(): string {
  if (cached) return cached;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg)) {
      try {
        if ((JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'migd') return (cached = dir);
      } catch {
        // not ours; keep walking
      }
    }
    const up = resolve(dir, '..');
    if (up === dir) throw new Error('migd repository root not found above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
}

/** proto/ folder with the public contracts. */
export const protoDir = (): string => join(repoRoot(), 'proto');
/** Cache for downloaded and built artefacts (guest image): MIGD_CACHE_DIR or <repo>/.cache. */
export const cacheDir = (): string => process.env['MIGD_CACHE_DIR'] ?? join(repoRoot(), '.cache');
/** Development certificates made by scripts/setup: MIGD_CERT_DIR or <repo>/.cache/certs. */
export const certDir = (): string => process.env['MIGD_CERT_DIR'] ?? join(cacheDir(), 'certs');
