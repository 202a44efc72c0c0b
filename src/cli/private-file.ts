import { closeSync, fchmodSync, openSync, writeSync } from "node:fs";

/**
 * Writes `text` to `path` readable by its owner only (0600), as the key store is: for files that
 * hold personal data (an export, an erasure receipt). `writeFile`'s `mode` applies only to a file
 * it creates, so a file that already existed (an earlier export, a `touch`ed name) kept its 0644;
 * here the mode is set on the open file before anything is written into it. Throws the system's
 * error (e.g. EACCES) naming the path.
 */
export function writePrivateFile(path: string, text: string): void {
  const fd = openSync(path, "w", 0o600);
  try {
    fchmodSync(fd, 0o600);
    writeSync(fd, text);
  } finally {
    closeSync(fd);
  }
}
