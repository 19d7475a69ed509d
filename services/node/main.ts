/**
 * Node daemon entry point: `node dist/services/node/main.js --node-id a --listen 198.18.0.10:7001
 * --migration-address 198.19.0.10 --state-dir /var/lib/migd/node-a [--coordinator host:port]`.
 * Configuration errors and missing dependencies are reported by name, not as stack traces.
 */
import { MigdError } from '../shared/errors.js';
import { createLogger } from '../shared/log.js';
import { restrictUmask } from '../shared/private-files.js';
import { loadNodeConfig, nodeUsage } from './config.js';
import { NodeDaemon } from './daemon.js';

const log = createLogger('node');

async function main(): Promise<void> {
  // Node state, QEMU logs, sockets and TLS copies are private to this daemon's user (QEMU
  // inherits the umask).
  const argv = process.argv.slice(2);
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`${nodeUsage()}\n`);
    return;
  }
  restrictUmask();
  const config = loadNodeConfig(argv);
  const daemon = await NodeDaemon.start(config, log.child({ nodeId: config.nodeId }));
  let stopping = false;
  const shutdown = (sig: string): void => {
    if (stopping) return;
    stopping = true;
    log.info('shutting down; QEMU processes keep running', { signal: sig });
    daemon.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error('shutdown failed', { err });
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  // Tell a parent (npm start, tests) where we listen.
  process.stdout.write(JSON.stringify({ ready: true, nodeId: config.nodeId, port: daemon.port }) + '\n');
}

main().catch((err: unknown) => {
  if (err instanceof MigdError) {
    process.stderr.write(`migd node: ${err.message}\n`);
  } else {
    log.error('fatal', { err });
  }
  process.exit(1);
});
