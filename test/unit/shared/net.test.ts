import { createServer } from 'node:net';
import { describe, expect, it } from 'vitest';
import { answers, freePort } from '../../../services/shared/net.js';

// The unanswered case (a link that drops everything) is test/integration/node/recovery.test.ts's cut.
describe('answers: whether a path to a host works', () => {
  it('is true for a listening port and for a refused one (the RST came back), on loopback', async () => {
    const srv = createServer((s) => s.destroy());
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    try {
      const port = (srv.address() as { port: number }).port;
      expect(await answers('127.0.0.1', port, 1000)).toBe(true);
      const closed = await freePort('127.0.0.1');
      expect(await answers('127.0.0.1', closed, 1000)).toBe(true);
    } finally {
      await new Promise((r) => srv.close(r));
    }
  });

});
