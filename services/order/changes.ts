/**
 * In-process notice that an order's status changed, so WatchOrder answers at
 * once when the saga running in this process moves an order. A change made
 * by another replica is not heard here: WatchOrder also re-reads the order
 * on a timer, so it sees those too, only later.
 */
import { EventEmitter } from 'node:events';

export class OrderChanges {
  readonly #emitter = new EventEmitter();

  constructor() {
    // One listener per open WatchOrder stream on the same order; there is no leak to warn about.
    this.#emitter.setMaxListeners(0);
  }

  /** Tells every watcher of `orderId` to re-read it. */
  changed(orderId: string): void {
    this.#emitter.emit(orderId);
  }

  /** Calls `fn` on every change of `orderId` until the returned function is called. */
  subscribe(orderId: string, fn: () => void): () => void {
    this.#emitter.on(orderId, fn);
    return () => this.#emitter.off(orderId, fn);
  }

  /**
   * Resolves when `orderId` changes, when `ms` pass, or when `signal` aborts,
   * whichever comes first. A change that happened before the call is not
   * seen: subscribe first, read, then wait (WatchOrder does).
   */
  wait(orderId: string, ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        unsubscribe();
        signal?.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      const unsubscribe = this.subscribe(orderId, done);
      if (signal?.aborted) done();
      else signal?.addEventListener('abort', done, { once: true });
    });
  }
}
