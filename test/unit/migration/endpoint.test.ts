import { describe, expect, it } from 'vitest';
import { checkMigrationAddress, streamUri, tcpUri } from '../../../services/node/migration/endpoint.js';

describe('migration stream endpoint', () => {
  it('builds tcp:<registered address>:<port> from the reported port, whatever URI came with it', () => {
    expect(streamUri('198.19.1.11', { port: 40000, uri: 'exec:touch /tmp/x' })).toBe('tcp:198.19.1.11:40000');
    expect(streamUri('fd00::2', { port: 5 })).toBe('tcp:[fd00::2]:5');
    expect(streamUri('node-b.example', { port: 65535 })).toBe('tcp:node-b.example:65535');
  });

  it('accepts a URI without a port only when it is exactly tcp to the registered address', () => {
    expect(streamUri('198.19.1.11', { uri: 'tcp:198.19.1.11:41000' })).toBe('tcp:198.19.1.11:41000');
    for (const uri of ['exec:nc 198.19.1.11 4000', 'file:/etc/passwd', 'unix:/tmp/s', 'tcp:198.19.1.12:41000', 'tcp:198.19.1.11:41000,x', 'rdma:198.19.1.11:4000', 'tcp:198.19.1.11:0', 'tcp:198.19.1.11:70000', '']) {
      expect(() => streamUri('198.19.1.11', { uri }), uri).toThrow(expect.objectContaining({ code: 'FAILED_PRECONDITION', reason: 'DESTINATION_ENDPOINT_REFUSED' }));
    }
    expect(() => streamUri('198.19.1.11', { port: 70000 })).toThrow(/no usable migration port/);
  });

  it('refuses registered addresses that are not an IP or a host name', () => {
    for (const a of ['', 'exec:x', 'a b', '1.2.3.4:5', 'host/x', '-bad']) expect(() => checkMigrationAddress(a), a).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    expect(tcpUri('10.0.0.1', 1)).toBe('tcp:10.0.0.1:1');
  });
});
