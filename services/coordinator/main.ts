/**
 * Coordinator entry point:
 * `node dist/services/coordinator/main.js --listen 198.18.0.1:7000 --db /var/lib/migd/history.sqlite
 *  --nats nats://127.0.0.1:4222 [--tls-dir DIR] [--roles alice=operator,bob=viewer] [--metrics-listen H:P]`
 * (every option: services/coordinator/config.ts). Prints `{"ready":true,...}` on stdout once it
 * serves. Configuration errors and missing dependencies are reported by name, not as stack traces.
 * SIGTERM/SIGINT stop it; running migrations keep running on their nodes and a restarted
 * coordinator picks them up again.
 */
import { MigdError } from '../shared/errors.js';
import { createLogger } from '../shared/log.js';
import { restrictUmask } from '../shared/private-files.js';
import { coordinatorUsage, loadCoordinatorConfig, redactDb } from './config.js';
import { Coordinator } from './coordinator.js';

const log = createLogger('coordinator');

async function main(): Promise<void> {
  // Everything this daemon writes (history database, WAL) is private to its user.
  const argv = process.argv.slice(2);
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`${coordinatorUsage()}\n`);
    return;
  }
  restrictUmask();
  const config = loadCoordinatorConfig(argv);
  const coordinator = await Coordinator.start(config, log);
  let stopping = false;
  const shutdown = (sig: string): void => {
    if (stopping) return;
    stopping = true;
    log.info('shutting down; migrations keep running on their nodes', { signal: sig });
    coordinator.stop().then(
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
  process.stdout.write(JSON.stringify({ ready: true, listen: config.listen, port: coordinator.port, metricsPort: coordinator.metricsPort, db: redactDb(config.db) }) + '\n');
}

main().catch((err: unknown) => {
  if (err instanceof MigdError) {
    process.stderr.write(`migd coordinator: ${err.message}\n`);
  } else {
    log.error('fatal', { err });
  }
  process.exit(1);
});
