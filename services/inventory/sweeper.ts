/**
 * Releases expired reservations in the background: every `intervalMs`, the
 * store sweeps batches until none is due. Several replicas may run it at once
 * (the store's SKIP LOCKED gives each expired reservation to one of them).
 */
import type { InventoryStore } from './store.js';

export interface Sweeper {
  /** Runs one pass now (also what the timer does); resolves how many were released. */
  runOnce(): Promise<number>;
  /** Stops the timer and waits for a running pass. */
  stop(): Promise<void>;
}

export function startSweeper(
  store: InventoryStore,
  options: { intervalMs: number; batchSize?: number; onError?: (err: unknown) => void; onReleased?: (n: number) => void },
): Sweeper {
  let running: Promise<number> | undefined;
  let stopped = false;

  const pass = async (): Promise<number> => {
    let total = 0;
    // Drain the backlog in batches, so one pass never holds many rows locked for long.
    for (;;) {
      if (stopped) return total;
      const n = await store.sweepExpired(options.batchSize ?? 100);
      total += n;
      if (n < (options.batchSize ?? 100)) return total;
    }
  };
  const runOnce = (): Promise<number> => {
    running ??= pass().finally(() => {
      running = undefined;
    });
    return running;
  };
  const timer = setInterval(() => {
    runOnce().then(
      (n) => n > 0 && options.onReleased?.(n),
      (err: unknown) => options.onError?.(err),
    );
  }, options.intervalMs);
  timer.unref();

  return {
    runOnce,
    async stop() {
      stopped = true;
      clearInterval(timer);
      await running?.catch(() => {});
    },
  };
}
