/**
 * Transport security for every migd server and client. With a CA, certificate and key configured,
 * servers require and verify client certificates (mutual TLS) and clients verify servers.
 * Plain text is allowed only when configuration says `insecure: true` explicitly, and only on a
 * loopback address.
 */
import { existsSync, readFileSync, unwatchFile, watchFile } from 'node:fs';
import { isIP } from 'node:net';
import { checkServerIdentity } from 'node:tls';
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
  /**
   * The CA's revocation list (PEM). A server given one refuses client certificates on it and
   * reloads it when the file changes (new connections only). Optional: without the file, nothing
   * is revoked.
   */
  readonly crlFile?: string;
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
  /**
   * Names the server's certificate may carry instead (any one of them; default: `serverName`
   * only). A node is dialled expecting its own identity `migd-node.<id>`, so one node's
   * certificate cannot stand in for another's.
   */
  readonly serverNames?: readonly string[];
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

/**
 * mTLS server credentials honouring a revocation list: OpenSSL checks every client certificate
 * against the CRL (Node's `crl` option turns on CRL checking for the whole chain). The list is
 * polled while a server uses the credentials, so `certs.js revoke NAME` takes effect for new
 * connections without a restart.
 */
class CrlServerCredentials extends ServerCredentials {
  private watching = false;
  private loaded: string;
  private readonly onChange = (): void => this.reload();

  constructor(
    private readonly base: { ca: Buffer; cert: Buffer; key: Buffer },
    private readonly crlFile: string,
  ) {
    const crl = readFileSync(crlFile);
    super({ requestCert: true, rejectUnauthorized: true }, { ...base, crl });
    this.loaded = crl.toString();
  }

  override _addWatcher(watcher: Parameters<ServerCredentials['_addWatcher']>[0]): void {
    super._addWatcher(watcher);
    if (this.watching) return;
    this.watching = true;
    watchFile(this.crlFile, { interval: CRL_POLL_MS, persistent: false }, this.onChange);
  }

  override _removeWatcher(watcher: Parameters<ServerCredentials['_removeWatcher']>[0]): void {
    super._removeWatcher(watcher);
    if (this.getWatcherCount() === 0 && this.watching) {
      this.watching = false;
      unwatchFile(this.crlFile, this.onChange);
    }
  }

  private reload(): void {
    let crl: Buffer;
    try {
      crl = readFileSync(this.crlFile);
    } catch {
      return; // keep the last list: a missing file must not un-revoke anyone
    }
    if (crl.toString() === this.loaded) return;
    this.loaded = crl.toString();
    this.updateSecureContextOptions({ ...this.base, crl });
  }

  _equals(other: ServerCredentials): boolean {
    return other === this;
  }
}

/** How often a server checks its revocation list for changes (ms). */
const CRL_POLL_MS = 1000;

/**
 * Server credentials: mTLS requiring a client certificate signed by the CA (and not on the CA's
 * revocation list when `tls.crlFile` exists), or loopback plain text.
 */
export function serverCredentials(sec: TransportSecurity, address: string): ServerCredentials {
  checkInsecure(sec, address, 'server transport');
  if (!sec.tls) return ServerCredentials.createInsecure();
  const ca = readPem(sec.tls.caFile, 'TLS CA');
  const cert = readPem(sec.tls.certFile, 'TLS certificate');
  const key = readPem(sec.tls.keyFile, 'TLS key');
  if (sec.tls.crlFile && existsSync(sec.tls.crlFile)) return new CrlServerCredentials({ ca, cert, key }, sec.tls.crlFile);
  return ServerCredentials.createSsl(ca, [{ cert_chain: cert, private_key: key }], true);
}

/** Channel credentials and options for a client of `address`. */
export function channelCredentials(sec: TransportSecurity, address: string): { creds: ChannelCredentials; options: ChannelOptions } {
  checkInsecure(sec, address, 'client transport');
  if (!sec.tls) return { creds: credentials.createInsecure(), options: {} };
  const names = sec.serverNames?.length ? sec.serverNames : undefined;
  const creds = credentials.createSsl(
    readPem(sec.tls.caFile, 'TLS CA'),
    readPem(sec.tls.keyFile, 'TLS key'),
    readPem(sec.tls.certFile, 'TLS certificate'),
    names
      ? {
          // The certificate must name one of the expected identities (not just any host name).
          checkServerIdentity: (_host, cert) => {
            let first: Error | undefined;
            for (const n of names) {
              const err = checkServerIdentity(n, cert);
              if (!err) return undefined;
              first ??= err;
            }
            return first;
          },
        }
      : undefined,
  );
  const override = sec.serverName ?? names?.[0];
  const options: ChannelOptions = override ? { 'grpc.ssl_target_name_override': override, 'grpc.default_authority': override } : {};
  return { creds, options };
}
