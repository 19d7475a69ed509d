/**
 * Throw-away PostgreSQL clusters for tests (initdb + pg_ctl in a temp dir, free loopback port):
 * see services/testbed/postgres.ts. Dispose them in afterAll/afterEach; the process's exit hook
 * stops any left behind.
 */
export { PG_TEST_USER, postgresBinDir, startPostgres, type PostgresServer } from '../../services/testbed/postgres.js';
