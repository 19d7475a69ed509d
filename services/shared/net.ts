/** Small network helpers shared by the services, the testbed, scripts and tests. */
import { createServer } from 'node:net';

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
