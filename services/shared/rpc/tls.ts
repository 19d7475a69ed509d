/**
 * Transport security for every migd server and client. With a CA, certificate and key configured,
 * servers require and verify client certificates (mutual TLS) and clients verify servers.
 * Plain text is allowed only when configuration says `insecure: true` explicitly, and only on a
 * loopback address.
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { credentials, ServerCredentials, type ChannelCredentials, type ChannelOptions } from '@grpc/grpc-js';
import { ConfigError, DependencyError } from '../errors.js';

/** Files of a TLS identity (PEM). */
export interface TlsFiles {
  /** CA certificate that signs every peer's certificate. */
  readonly caFile: string;
  /** This process's certificate. */
  readonly certFile: string;
  /** This process's private key. */
  readonly keyFile: string;
}

/** How a server or client secures its transport. Exactly one of `tls` or `insecure`. */
export interface TransportSecurity {
  /** Mutual TLS with these files. */
  readonly tls?: TlsFiles;
  /** Plain text; only honoured on loopback addresses. Default false. */
  readonly insecure?: boolean;
  /**
   * The name clients expect in the server's certificate (SAN DNS), e.g. `migd-node`. Servers in
   * this project are reached by IP addresses of network namespaces, so identity is checked by
   * service name rather than by address. Default: the host part of the address.
   */
  readonly serverName?: string;
}

/** True for 127.0.0.0/8, ::1 and `localhost`. */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '');
  if (h === 'localhost' || h === '::1') return true;
  return isIP(h) === 4 && h.startsWith('127.');
}

/** Splits `host:port` / `[v6]:port`. */
export function splitHostPort(address: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(address);
  if (!m) throw new ConfigError('address', `"${address}" is not host:port`);
  return { host: (m[1] ?? m[2]) as string, port: Number(m[3]) };
}

function readPem(file: string, what: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new DependencyError(what, `cannot read ${file} (run scripts/setup to create development certificates)`, { cause: err });
  }
}

function checkInsecure(sec: TransportSecurity, address: string, option: string): void {
  if (sec.tls && sec.insecure) throw new ConfigError(option, 'set either tls or insecure, not both');
  if (!sec.tls && !sec.insecure) throw new ConfigError(option, 'no TLS files configured; set tls {caFile, certFile, keyFile} or insecure: true (loopback only)');
  if (sec.insecure && !isLoopbackHost(splitHostPort(address).host)) {
    throw new ConfigError(option, `plain-text gRPC is only allowed on loopback, not on ${address}`);
  }
}

/** Server credentials: mTLS requiring a client certificate signed by the CA, or loopback plain text. */
export function serverCredentials(sec: TransportSecurity, address: string): ServerCredentials {
  checkInsecure(sec, address, 'server transport');
  if (!sec.tls) return ServerCredentials.createInsecure();
  return ServerCredentials.createSsl(
    readPem(sec.tls.caFile, 'TLS CA'),
    [{ cert_chain: readPem(sec.tls.certFile, 'TLS certificate'), private_key: readPem(sec.tls.keyFile, 'TLS key') }],
    true,
  );
}

/** Channel credentials and options for a client of `address`. */
export function channelCredentials(sec: TransportSecurity, address: string): { creds: ChannelCredentials; options: ChannelOptions } {
  checkInsecure(sec, address, 'client transport');
  if (!sec.tls) return { creds: credentials.createInsecure(), options: {} };
  const creds = credentials.createSsl(
    readPem(sec.tls.caFile, 'TLS CA'),
    readPem(sec.tls.keyFile, 'TLS key'),
    readPem(sec.tls.certFile, 'TLS certificate'),
  );
  const options: ChannelOptions = sec.serverName ? { 'grpc.ssl_target_name_override': sec.serverName, 'grpc.default_authority': sec.serverName } : {};
  return { creds, options };
}
