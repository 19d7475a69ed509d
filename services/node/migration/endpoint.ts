/**
 * Where a migration stream may go. QEMU's `migrate` takes a URI that can also mean "run this
 * shell command" (`exec:`), "write this host file" (`file:`) or "any host" — so the source never
 * passes on a URI it was given. It builds `tcp:<host>:<port>` itself from the destination's
 * registered migration address (from the coordinator) and the port the destination reports, and
 * accepts nothing else.
 */
import { isIP } from 'node:net';
import { FailedPreconditionError, InvalidArgumentError } from '../../shared/errors.js';
import { splitHostPort } from '../../shared/rpc/tls.js';

const HOSTNAME = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

/**
 * Checks a registered migration address: an IP literal or a DNS host name, nothing else.
 * @throws InvalidArgumentError
 */
export function checkMigrationAddress(address: string, field = 'destination.migration_address'): string {
  if (!address) throw new InvalidArgumentError(`${field} is required`);
  if (isIP(address) === 0 && !HOSTNAME.test(address)) throw new InvalidArgumentError(`${field} must be an IP address or a host name`);
  return address;
}

/** `tcp:<address>:<port>` (IPv6 literals in brackets). The address must have passed checkMigrationAddress. */
export function tcpUri(address: string, port: number): string {
  return isIP(address) === 6 ? `tcp:[${address}]:${port}` : `tcp:${address}:${port}`;
}

/**
 * The URI the source streams to, from the destination's reply: its `port` on the registered
 * address. A destination that reports no port (an older daemon) must report exactly
 * `tcp:<registered address>:<port>` — anything else (`exec:`, `file:`, `unix:`, another host) is
 * refused.
 * @throws FailedPreconditionError (reason DESTINATION_ENDPOINT_REFUSED)
 */
export function streamUri(registeredAddress: string, reply: { readonly port?: number; readonly uri?: string }): string {
  const address = checkMigrationAddress(registeredAddress);
  let port = reply.port ?? 0;
  if (!port && reply.uri) {
    const m = /^tcp:(.+):(\d{1,5})$/.exec(reply.uri);
    if (m && tcpUri(address, Number(m[2])) === reply.uri) port = Number(m[2]);
  }
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new FailedPreconditionError('the destination reported no usable migration port on its registered migration address', { reason: 'DESTINATION_ENDPOINT_REFUSED' });
  }
  return tcpUri(address, port);
}

/**
 * The host and port of a registered management address (`host:port`, `[v6]:port`), its host
 * checked like a migration address: where a post-copy recovery may go when the migration network
 * is down.
 * @throws ConfigError (not host:port), InvalidArgumentError (a host that is no IP or host name)
 */
export function managementEndpointOf(managementAddress: string): { host: string; port: number } {
  const { host, port } = splitHostPort(managementAddress);
  return { host: checkMigrationAddress(host, 'management_address'), port };
}
