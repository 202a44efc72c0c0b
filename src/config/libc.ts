import { dlopen, FFIType } from "bun:ffi";

/** The C library's names to try, this platform's first: glibc, then musl (Alpine); macOS's libSystem. */
const LIBC_NAMES =
  process.platform === "darwin"
    ? ["libc.dylib", "/usr/lib/libSystem.B.dylib"]
    : ["libc.so.6", `libc.musl-${process.arch === "arm64" ? "aarch64" : "x86_64"}.so.1`];

/**
 * One libc function of `int f(int[, int])` shape through Bun's FFI (`bun:ffi` `dlopen`), or `null`
 * where no libc could be opened or it lacks the symbol (`syncfs` is Linux-only): callers then fall
 * back to what Node's `fs` offers. Each symbol is opened on its own, so one missing symbol does not
 * lose the others.
 */
function libcFunction<A extends number[]>(
  symbol: string,
  arity: A["length"],
): ((...args: A) => number) | null {
  for (const name of LIBC_NAMES) {
    try {
      const args = Array.from({ length: arity }, () => FFIType.i32);
      const lib = dlopen(name, { [symbol]: { args, returns: FFIType.i32 } });
      const fn = lib.symbols[symbol] as unknown as (...args: A) => number;
      return (...args: A) => fn(...args);
    } catch {
      // Not this libc, or not this symbol in it; try the next name.
    }
  }
  return null;
}

/** flock(2): `flock(fd, operation)` → 0, or -1 (EWOULDBLOCK with LOCK_NB when held elsewhere). */
export const flock = libcFunction<[number, number]>("flock", 2);

/**
 * syncfs(2) (Linux ≥ 2.6.39): writes out every dirty page and inode of the file system holding `fd`
 * in one call, one journal commit where an fsync per file makes one each. → 0, or -1.
 */
export const syncfs = libcFunction<[number]>("syncfs", 1);
