#!/usr/bin/env node
/**
 * migctl: the coordinator's command line, like `virsh migrate` / `virsh domjobinfo` for a whole
 * cluster. `node dist/services/coordinator/cli/migctl.js --help` lists the commands and exit
 * codes. This file only wires the process (argv, environment, stdout, Ctrl-C, certificates) to
 * app.ts.
 */
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { CoordinatorServiceService } from '../../shared/gen/migd/v1/coordinator.js';
import { certDir } from '../../shared/paths.js';
import { identityFiles } from '../../shared/pki.js';
import { createLeaderClient, splitAddresses } from '../../shared/rpc/leader-client.js';
import { runMigctl } from './app.js';
import { DEFAULT_DEADLINE_MS } from './commands.js';
import { ExitCode } from './exit-codes.js';

const interrupt = new AbortController();
process.on('SIGINT', () => {
  // The first Ctrl-C stops watching cleanly; a second one does not wait.
  if (interrupt.signal.aborted) process.exit(ExitCode.INTERRUPTED);
  interrupt.abort();
});
// `migctl runs | head`: a closed pipe is not an error.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(ExitCode.OK);
  throw err;
});

function defaultCertDir(): string {
  try {
    return certDir();
  } catch {
    return '.cache/certs';
  }
}

const code = await runMigctl(process.argv.slice(2), {
  env: process.env,
  defaultCertDir,
  signal: interrupt.signal,
  newKey: () => `migctl-${randomUUID()}`,
  io: {
    stdout: (s) => void process.stdout.write(s),
    stderr: (s) => void process.stderr.write(s),
    isTTY: process.stdout.isTTY === true,
    // A pty without a size (e.g. under script(1)) reports 0 columns.
    columns: process.stdout.columns || 100,
    now: () => Date.now(),
    writeFile: (path, data) => writeFile(path, data),
  },
  connect: (g) => {
    const files = identityFiles(g.certDir, g.identity);
    for (const f of [files.caFile, files.certFile, files.keyFile]) {
      if (!existsSync(f)) throw new Error(`${f} is missing (identity "${g.identity}" in ${g.certDir}; see --cert-dir, --identity; scripts/setup creates development certificates)`);
    }
    return createLeaderClient('migd.v1.CoordinatorService', CoordinatorServiceService, splitAddresses(g.coordinator), {
      defaultDeadlineMs: g.timeoutMs ?? DEFAULT_DEADLINE_MS,
      security: { tls: files, serverName: 'migd-coordinator' },
    });
  },
});
// Let stdout drain and the channel close rather than exiting mid-write.
process.exitCode = code;
