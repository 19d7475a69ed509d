/**
 * Command-line entry of the guest image builder, for scripts/setup:
 *
 *   node dist/stress/image/cli.js [--cache DIR] [--install DIR] [--refresh-kernel] [--kernel-package PKG] [--quiet]
 *
 * `--install DIR` also copies the kernel and initrd into DIR, a node daemon's `--guest-image`
 * folder (default of the daemon: /var/lib/migd/guest); node daemons never build an image.
 * Prints the built image as one JSON object on stdout ({ kernel, initrd, ... }); logs go to
 * stderr. Exit status 0 on success, 1 on a missing dependency or failed step (message on stderr).
 */
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { MigdError } from '../../services/shared/errors.js';
import { createLogger } from '../../services/shared/log.js';
import { ensureGuestImage, installGuestImage } from './build.js';

const USAGE = 'usage: cli.js [--cache DIR] [--install DIR] [--refresh-kernel] [--kernel-package PKG] [--quiet]';

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      cache: { type: 'string' },
      install: { type: 'string' },
      'refresh-kernel': { type: 'boolean', default: false },
      'kernel-package': { type: 'string' },
      quiet: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const log = createLogger('guest-image', {}, undefined, values.quiet ? 'warn' : undefined);
  const started = performance.now();
  const image = await ensureGuestImage({
    ...(values.cache !== undefined ? { cacheDir: values.cache } : {}),
    ...(values['kernel-package'] !== undefined ? { kernelPackage: values['kernel-package'] } : {}),
    refreshKernel: values['refresh-kernel'],
    log,
  });
  log.info('guest image ready', { ms: Math.round(performance.now() - started), cached: image.cached });
  if (values.install !== undefined) {
    const dir = await installGuestImage(image, resolve(values.install));
    log.info('guest image installed', { dir });
  }
  process.stdout.write(JSON.stringify(image) + '\n');
  return 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const usageError = err instanceof Error && 'code' in err && String(err.code).startsWith('ERR_PARSE_ARGS');
    const msg = err instanceof MigdError || usageError ? (err as Error).message : err instanceof Error ? (err.stack ?? err.message) : String(err);
    process.stderr.write(`guest image: ${msg}\n${usageError ? `${USAGE}\n` : ''}`);
    process.exitCode = 1;
  },
);
