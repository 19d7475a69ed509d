/**
 * Tells a rejected certificate from a server that is not there. gRPC reports both as UNAVAILABLE
 * ("No connection established"): with TLS 1.3 the server checks the client's certificate after
 * the client considers the handshake done, and simply hangs up. So when a call fails that way,
 * the client makes one plain TLS connection with the same files and watches what happens:
 * - our CA does not verify the server's certificate → the certificates come from different CAs;
 * - the handshake completes, then the server closes without answering the HTTP/2 preface →
 *   it refused our client certificate;
 * - refused, timed out, or the server answers → not a certificate problem (undefined).
 */
import { readFileSync } from 'node:fs';
import { connect } from 'node:tls';
import { UnauthenticatedError } from '../errors.js';
import { splitHostPort, type TlsFiles } from './tls.js';

/** Reason attached to errors raised for a rejected certificate (stable). */
export const CERTIFICATE_REJECTED = 'CERTIFICATE_REJECTED';

// Errors Node's TLS raises when our CA does not verify the peer's certificate.
const VERIFY_CODES = new Set([
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_SIGNATURE_FAILURE',
  'CERT_UNTRUSTED',
  'CERT_NOT_YET_VALID',
  'CERT_HAS_EXPIRED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

const H2_PREFACE = 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n';

/**
 * Probes `address` with `files`; resolves to an UnauthenticatedError (reason CERTIFICATE_REJECTED)
 * naming the side that refused, or undefined when the certificates are not the problem.
 * Never rejects.
 */
export function probeCertificate(address: string, files: TlsFiles, serverName: string | undefined, timeoutMs = 2000): Promise<UnauthenticatedError | undefined> {
  let ca: Buffer, cert: Buffer, key: Buffer;
  try {
    ca = readFileSync(files.caFile);
    cert = readFileSync(files.certFile);
    key = readFileSync(files.keyFile);
  } catch {
    return Promise.resolve(undefined);
  }
  const { host, port } = splitHostPort(address);
  return new Promise((resolve) => {
    let done = false;
    let handshaken = false;
    const finish = (v: UnauthenticatedError | undefined): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(v);
    };
    const socket = connect({ host, port, ca, cert, key, servername: serverName ?? host, ALPNProtocols: ['h2'] });
    const timer = setTimeout(() => finish(undefined), timeoutMs);
    socket.once('secureConnect', () => {
      handshaken = true;
      socket.write(H2_PREFACE);
    });
    // Any answer (the server's SETTINGS frame) means it accepted us.
    socket.once('data', () => finish(undefined));
    socket.once('error', (e: NodeJS.ErrnoException) => {
      if (!handshaken && e.code && VERIFY_CODES.has(e.code)) {
        finish(
          new UnauthenticatedError(
            `certificate rejected: the server's certificate at ${address} is not signed by the CA in ${files.caFile} (${e.message}); this client's certificates come from a different CA than the server's`,
            { reason: CERTIFICATE_REJECTED },
          ),
        );
      } else if (handshaken && /alert|certificate/i.test(e.message)) {
        finish(new UnauthenticatedError(`certificate rejected: the server at ${address} refused the client certificate ${files.certFile} (${e.message})`, { reason: CERTIFICATE_REJECTED }));
      } else {
        finish(undefined);
      }
    });
    socket.once('end', () => {
      finish(
        handshaken
          ? new UnauthenticatedError(
              `certificate rejected: the server at ${address} refused the client certificate ${files.certFile} (it is not signed by a CA the server trusts, or was revoked)`,
              { reason: CERTIFICATE_REJECTED },
            )
          : undefined,
      );
    });
    socket.once('close', () => finish(undefined));
  });
}
