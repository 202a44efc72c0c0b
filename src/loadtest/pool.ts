/**
 * Runs `task(i)` for i in [0, count) with at most `concurrency` in flight, calling `onDone` after
 * each; results keep their index. The first failure stops new tasks and is rethrown.
 */
export async function inPool<T>(
  count: number,
  concurrency: number,
  task: (i: number) => Promise<T>,
  onDone: (done: number) => void = () => {},
): Promise<T[]> {
  const results = new Array<T>(count);
  let next = 0;
  let done = 0;
  let failure: unknown;
  const worker = async () => {
    while (failure === undefined && next < count) {
      const i = next++;
      try {
        results[i] = await task(i);
      } catch (error) {
        failure ??= error;
        return;
      }
      onDone(++done);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  if (failure !== undefined) throw failure;
  return results;
}
