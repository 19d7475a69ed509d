import { describe, expect, it } from 'vitest';
import { publicMessage, toPublicError } from '../../../services/node/public-error.js';
import { QmpCommandError, QmpDisconnectedError } from '../../../services/node/qmp/errors.js';
import { FailedPreconditionError, type MigdError, NotFoundError } from '../../../services/shared/errors.js';
import { createLogger } from '../../../services/shared/log.js';

describe('errors a node shows its clients', () => {
  const lines: string[] = [];
  const log = createLogger('test', {}, (l) => lines.push(l));

  it("replaces QEMU's texts, QMP socket paths and start-up output, keeping code and reason, and logs the detail", () => {
    const qmp = new QmpCommandError('migrate', { uri: 'tcp:x:1' }, { class: 'GenericError', desc: "Failed to connect to '/var/lib/secret/path'" });
    const out = toPublicError(qmp, log, '/migd.v1.NodeService/StartMigration') as MigdError;
    expect(out).toMatchObject({ code: qmp.code, reason: 'QMP_COMMAND_FAILED' });
    expect(out.message).toBe("QEMU refused migrate (GenericError); the node's log has the details");
    expect(lines.join('\n')).toContain('/var/lib/secret/path');
    const gone = toPublicError(new QmpDisconnectedError('QEMU closed the QMP connection /srv/node/vms/x/qmp.sock'), log, 'm') as MigdError;
    expect(gone.message).not.toContain('qmp.sock');
    const start = new FailedPreconditionError('QEMU for vm x exited during start-up (code 1): qemu-system-x86_64: -kernel /etc/x: error', { reason: 'QEMU_START_FAILED' });
    expect(publicMessage(start)).toBe("QEMU could not start the VM; the node's log has QEMU's output");
    expect((toPublicError(start, log, 'm') as MigdError).reason).toBe('QEMU_START_FAILED');
  });

  it("passes migd's own messages through, and hides anything that is not a MigdError", () => {
    const nf = new NotFoundError('vm x not found', { reason: 'VM_NOT_FOUND' });
    expect(toPublicError(nf, log, 'm')).toBe(nf);
    expect(publicMessage(new Error('ENOENT /etc/shadow'))).toBe('internal error');
  });
});
