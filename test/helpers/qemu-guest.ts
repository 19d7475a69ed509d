/**
 * Guests for VM tests.
 *
 * `writeTestGuest()` writes a 77-byte multiboot (v1, a.out-kludge) kernel that QEMU loads with
 * `-kernel`: it prints one line on COM1 and halts with interrupts off, so it costs no host CPU while
 * "running", boots in well under a second under TCG, and prints again after `system_reset`. That
 * makes console and reattach tests fast and hermetic without a Linux image.
 *
 * `stressGuest()` returns the real guest (kernel + initramfs from `stress/image/`) when it has been
 * built into `.cache/guest/`.
 */
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const TEST_GUEST_BANNER = 'migd-test-guest: hello';

/** Writes the multiboot test kernel into `dir` and returns its path. */
export async function writeTestGuest(dir: string, banner = TEST_GUEST_BANNER): Promise<string> {
  const LOAD = 0x100000;
  const HEADER = 32;
  const msg = Buffer.from(banner + '\n\0', 'latin1');
  const code = Buffer.from([
    0xbe, 0, 0, 0, 0, //        mov esi, msg
    0x66, 0xba, 0xf8, 0x03, //  mov dx, 0x3f8 (COM1 data register)
    0xac, //                    next: lodsb
    0x84, 0xc0, //              test al, al
    0x74, 0x03, //              jz halt
    0xee, //                    out dx, al
    0xeb, 0xf8, //              jmp next
    0xfa, //                    halt: cli
    0xf4, //                    hlt
    0xeb, 0xfc, //              jmp halt
  ]);
  const entry = LOAD + HEADER;
  code.writeUInt32LE(entry + code.length, 1);
  const end = LOAD + HEADER + code.length + msg.length;
  const magic = 0x1badb002;
  const flags = 0x00010000; // bit 16: load addresses are in the header (no ELF needed)
  const header = Buffer.alloc(HEADER);
  [magic, flags, (-(magic + flags)) >>> 0, LOAD, LOAD, end, end, entry].forEach((v, i) => header.writeUInt32LE(v >>> 0, i * 4));
  const path = join(dir, 'test-guest.mb');
  await writeFile(path, Buffer.concat([header, code, msg]));
  return path;
}

export interface StressGuest {
  readonly kernel: string;
  readonly initrd: string;
}

/**
 * The real guest built by `stress/image/` into `.cache/guest/` (kernel.json names the vmlinux;
 * the newest `init/<hash>/initrd.cpio` is the workload), or undefined when it is not built yet.
 */
export function stressGuest(repoRoot = fileURLToPath(new URL('../..', import.meta.url))): StressGuest | undefined {
  const dir = process.env['MIGD_CACHE_DIR'] ?? join(repoRoot, '.cache', 'guest');
  try {
    const manifest = JSON.parse(readFileSync(join(dir, 'kernel.json'), 'utf8')) as { file?: string };
    if (manifest.file === undefined) return undefined;
    const kernel = join(dir, manifest.file);
    const initrds = readdirSync(join(dir, 'init'))
      .map((h) => join(dir, 'init', h, 'initrd.cpio'))
      .filter((p) => existsSync(p))
      .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
    const initrd = initrds[0];
    if (!existsSync(kernel) || initrd === undefined) return undefined;
    return { kernel, initrd };
  } catch {
    return undefined;
  }
}
