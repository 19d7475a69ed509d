/**
 * Polls `check` every `everyMs` until it holds; throws once `timeoutMs` has passed without it.
 * `check` is always tried at least once, and once more after the deadline passes, so a condition
 * that became true during the last sleep still counts.
 */
export async function until(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 5000, everyMs = 10): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
