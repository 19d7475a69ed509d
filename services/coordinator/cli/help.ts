/** migctl's help, made from the command table in spec.ts. */
import { COMMANDS, GLOBAL_FLAGS, type CommandName, type FlagSpecs } from './spec.js';

const EXIT_CODES = `Exit codes:
  0    done; with --watch/watch: every run succeeded
  1    a watched run failed or was cancelled, or an unexpected error
  2    usage error (unknown command or flag, bad value, missing argument, unreadable certificates)
  3    not found (VM, node, run or plan)
  4    refused by the coordinator: invalid argument, failed precondition, permission denied
       (your identity's role), already exists, resource exhausted
  5    coordinator unavailable or timed out
  130  interrupted (Ctrl-C) while watching a run; the run itself goes on
`;

function flagLines(flags: FlagSpecs): string {
  const rows = Object.entries(flags).map(([name, f]) => {
    const left = `${f.short ? `-${f.short}, ` : '    '}--${name}${f.type === 'string' ? ` ${f.value ?? 'VALUE'}` : ''}`;
    return [left, f.help + (f.multiple ? ' (repeatable)' : '')] as const;
  });
  const w = Math.max(...rows.map(([l]) => l.length));
  return rows.map(([l, h]) => `  ${l.padEnd(w)}  ${h}`).join('\n') + '\n';
}

/** The overview: commands, global flags, exit codes. */
export function mainHelp(): string {
  const cmds = Object.entries(COMMANDS).map(([, c]) => [c.synopsis.split(' [')[0] ?? c.synopsis, c.summary] as const);
  const w = Math.max(...cmds.map(([n]) => n.length));
  return `migctl: live-migrate VMs across a migd cluster (the coordinator's command line)

Usage: migctl [global flags] COMMAND [arguments] [flags]

Commands:
${cmds.map(([n, s]) => `  ${n.padEnd(w)}  ${s}`).join('\n')}

Global flags (before or after the command):
${flagLines(GLOBAL_FLAGS)}
Sizes and rates use binary units (K, M, G = KiB, MiB, GiB); rates also take bits (800mbit).
Durations: 500ms, 1.5s, 2m. Times: ISO 8601, or an age (2h, 7d).

Examples:
  migctl nodes
  migctl create-vm web1 --memory 512 --node a --pattern hotcold --workers 2 --bytes 64M --rate 10M
  migctl create-vm db1 --memory 256 --disk id=data,path=/var/lib/migd/disks/db1.qcow2,create=8G --nic vm
  migctl migrate web1 --to b --policy adaptive --watch
  migctl migrate web1 --postcopy-after 2 --bandwidth 100M --key deploy-42
  migctl drain a --to b,c --policy kubevirt --watch
  migctl set RUN --downtime 2s
  migctl runs --state failed --since 1d
  migctl history compare --since 7d
  migctl export --format csv -o runs.csv

${EXIT_CODES}
Run 'migctl COMMAND --help' for a command's flags.
`;
}

/** One command's help. */
export function commandHelp(name: CommandName): string {
  const c = COMMANDS[name];
  const notes = 'notes' in c ? `\n${c.notes.join('\n')}\n` : '';
  const flags = Object.keys(c.flags).length > 0 ? `\nFlags:\n${flagLines(c.flags)}` : '';
  return `migctl ${c.synopsis}\n\n${c.summary[0]?.toUpperCase() ?? ''}${c.summary.slice(1)}.\n${notes}${flags}\nGlobal flags:\n${flagLines(GLOBAL_FLAGS)}\n${EXIT_CODES}`;
}
