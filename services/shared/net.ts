/** Small network helpers shared by the services, the testbed, scripts and tests. */
import { connect, createServer } from 'node:net';

/** A free TCP port on `host` (bind to port 0, read it, close); the caller binds it right after. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const a = srv.address();
      const port = typeof a === 'object' && a !== null ? a.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Whether `host` answers a TCP connect to `port` within `timeoutMs`: an accepted connection or a
 * refusal (RST) both prove the path works; a timeout or an unreachable host or network do not.
 * The connection, if any, is closed at once without a byte sent.
 */
export async function answers(host: string, port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host, port });
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      s.removeAllListeners();
      s.on('error', () => undefined);
      s.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    s.once('connect', () => done(true));
    s.once('error', (err: NodeJS.ErrnoException) => done(err.code === 'ECONNREFUSED'));
  });
}
