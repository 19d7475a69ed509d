/**
 * Transport security for every migd server and client. With a CA, certificate and key configured,
 * servers require and verify client certificates (mutual TLS) and clients verify servers.
 * Plain text is allowed only when configuration says `insecure: true` explicitly, and only on a
 * loopback address.
 */
import { existsSync, readFileSync, statSync, unwatchFile, watchFile } from 'node:fs';
import { isIP } from 'node:net';
import { checkServerIdentity, createSecureContext, type PeerCertificate, type SecureContext } from 'node:tls';
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

/**
 * The stamp of an identity file: inode, size and modification time (ns). Replacing a file — by
 * rename or by rewriting it — changes it.
 */
function fileStamp(file: string): string {
  try {
    const s = statSync(file, { bigint: true });
    return `${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
  } catch {
    return 'missing';
  }
}

/**
 * Client secure contexts by identity files. Building one parses the CA, the certificate and the key
 * (~6–17 ms of CPU): a coordinator that built one per node client spent 1.7 s of its CPU on them
 * at 100 nodes. Clients with the same files share one context; the files' stamps are checked at
 * each client's creation, so a client created after the files were replaced (a renewed
 * certificate) loads the new ones, as before. A client keeps the context it was created with for
 * its reconnections (as before: grpc-js holds one context per channel).
 */
const clientContexts = new Map<string, { stamp: string; context: SecureContext }>();

/** Counts of {@link clientSecureContext} answers (tests and benchmarks). */
export const clientContextStats = { built: 0, shared: 0 };

/**
 * The secure context of a client with `files` (shared; rebuilt when a file changed).
 * @throws DependencyError when a file cannot be read
 */
export function clientSecureContext(files: TlsFiles): SecureContext {
  const key = `${files.caFile}\0${files.certFile}\0${files.keyFile}`;
  const stamp = `${fileStamp(files.caFile)}|${fileStamp(files.certFile)}|${fileStamp(files.keyFile)}`;
  const hit = clientContexts.get(key);
  if (hit && hit.stamp === stamp) {
    clientContextStats.shared++;
    return hit.context;
  }
  // What grpc-js's credentials.createSsl builds, once per identity.
  const context = createSecureContext({
    ca: readPem(files.caFile, 'TLS CA'),
    key: readPem(files.keyFile, 'TLS key'),
    cert: readPem(files.certFile, 'TLS certificate'),
    ciphers: process.env['GRPC_SSL_CIPHER_SUITES'],
  });
  clientContextStats.built++;
  clientContexts.set(key, { stamp, context });
  return context;
}

/** Channel credentials and options for a client of `address`. */
export function channelCredentials(sec: TransportSecurity, address: string): { creds: ChannelCredentials; options: ChannelOptions } {
  checkInsecure(sec, address, 'client transport');
  if (!sec.tls) return { creds: credentials.createInsecure(), options: {} };
  const names = sec.serverNames?.length ? sec.serverNames : undefined;
  // A function of this client's own: grpc-js shares a connection between channels to one address
  // whose credentials are equal (same context and same function), and clients did not share
  // connections before their contexts were shared.
  const check = names
    ? // The certificate must name one of the expected identities (not just any host name).
      (_host: string, cert: PeerCertificate): Error | undefined => {
        let first: Error | undefined;
        for (const n of names) {
          const err = checkServerIdentity(n, cert);
          if (!err) return undefined;
          first ??= err;
        }
        return first;
      }
    : (host: string, cert: PeerCertificate): Error | undefined => checkServerIdentity(host, cert);
  const creds = credentials.createFromSecureContext(clientSecureContext(sec.tls), { checkServerIdentity: check });
  const override = sec.serverName ?? names?.[0];
  const options: ChannelOptions = override ? { 'grpc.ssl_target_name_override': override, 'grpc.default_authority': override } : {};
  return { creds, options };
}
