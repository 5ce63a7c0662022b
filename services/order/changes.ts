/**
 * In-process notice that an order's status changed, so WatchOrder and
 * WatchMyOrders answer at once when the saga running in this process moves
 * an order (and WatchMyOrders when PlaceOrder here placed one). A change made
 * by another replica is not heard here: both streams also re-read on a
 * timer, so they see those too, only later.
 */
import { EventEmitter } from 'node:events';
import type { Order } from '../../gen/shop/order/v1/order_pb.js';
import type { OrderStatusName } from './domain.js';

/** What changed, when the one who changed it knows (the saga does): watchers need not re-read. */
export interface OrderChange {
  status: OrderStatusName;
  cancelReason: string;
  updateTime: Date;
}

/** What a watcher of a shopper's orders (WatchMyOrders) hears: an order placed, or one order's change. */
export type UserOrderChange = { orderId: string; placed: Order } | { orderId: string; change: OrderChange };

export class OrderChanges {
  readonly #emitter = new EventEmitter();
  /** Per shopper, apart from the per-order channel: order ids and user ids are both free text. */
  readonly #byUser = new EventEmitter();

  constructor() {
    // One listener per open WatchOrder / WatchMyOrders stream; there is no leak to warn about.
    this.#emitter.setMaxListeners(0);
    this.#byUser.setMaxListeners(0);
  }

  /** Tells every watcher of `orderId` (and of its shopper's orders, when `userId` is known) that it changed. */
  changed(orderId: string, change?: OrderChange, userId?: string): void {
    this.#emitter.emit(orderId, change);
    if (userId !== undefined && change) this.#byUser.emit(userId, { orderId, change } satisfies UserOrderChange);
  }

  /** Tells the watchers of `userId`'s orders that this process placed `order`. */
  placed(userId: string, order: Order): void {
    this.#byUser.emit(userId, { orderId: order.id, placed: order } satisfies UserOrderChange);
  }

  /** Calls `fn` on every change of `orderId` until the returned function is called. */
  subscribe(orderId: string, fn: (change: OrderChange | undefined) => void): () => void {
    this.#emitter.on(orderId, fn);
    return () => this.#emitter.off(orderId, fn);
  }

  /** Calls `fn` for every order of `userId` placed or changed here, until the returned function is called. */
  subscribeUser(userId: string, fn: (change: UserOrderChange) => void): () => void {
    this.#byUser.on(userId, fn);
    return () => this.#byUser.off(userId, fn);
  }
}
