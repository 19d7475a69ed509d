/**
 * The throw-away PostgreSQL harness itself: a real server from Debian's package, reachable on its
 * port, surviving stop/start and a crash with its data, and gone (process and dir) after dispose.
 */
import { existsSync } from 'node:fs';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { startPostgres, type PostgresServer } from '../../helpers/postgres.js';

async function query<T extends pg.QueryResultRow>(url: string, text: string): Promise<T[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<T>(text)).rows;
  } finally {
    await c.end();
  }
}

describe('throw-away PostgreSQL cluster', () => {
  let server: PostgresServer | undefined;
  afterEach(async () => {
    await server?.dispose();
    server = undefined;
  });

  it('serves, keeps its data across a restart and a crash, and leaves nothing behind', async () => {
    server = await startPostgres();
    const url = await server.createDatabase();
    expect(url).toMatch(/^postgres:\/\/migd@127\.0\.0\.1:\d+\/t_/);
    await query(url, 'CREATE TABLE t (v int); INSERT INTO t VALUES (42)');

    await server.stop();
    expect(server.running).toBe(false);
    await expect(query(url, 'SELECT 1')).rejects.toThrow();
    await server.start();
    expect(await query<{ v: number }>(url, 'SELECT v FROM t')).toEqual([{ v: 42 }]);

    const pid = server.pid!;
    await server.kill();
    expect(server.running).toBe(false);
    await server.start();
    expect(server.pid).not.toBe(pid);
    expect(await query<{ v: number }>(url, 'SELECT v FROM t')).toEqual([{ v: 42 }]);

    const dir = server.dir;
    const last = server.pid!;
    await server.dispose();
    server = undefined;
    expect(existsSync(dir)).toBe(false);
    // pg_ctl returns once the pid file is gone; the process itself exits a moment later.
    const gone = async (): Promise<boolean> => {
      for (let i = 0; i < 100; i++) {
        try {
          process.kill(last, 0);
        } catch {
          return true;
        }
        await new Promise((r) => setTimeout(r, 50));
      }
      return false;
    };
    expect(await gone()).toBe(true);
  }, 60_000);

  it('refuses a database name that is not a plain identifier, creating nothing', async () => {
    server = await startPostgres();
    await expect(server.createDatabase('x; DROP DATABASE postgres')).rejects.toThrow(/not a plain database name/);
    const dbs = await query<{ datname: string }>(server.url(), "SELECT datname FROM pg_database WHERE datname NOT LIKE 'template%'");
    expect(dbs.map((d) => d.datname)).toEqual(['postgres']);
  }, 60_000);
});
