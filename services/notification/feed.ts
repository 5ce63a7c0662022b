/**
 * The live feed behind WatchNotifications: which of this process's watchers
 * should hear about a notification that was just recorded.
 *
 * Why Postgres LISTEN/NOTIFY and not an in-process emitter: the replica that
 * records a notification (whichever one the NATS consumer handed the event to)
 * is usually not the replica holding the user's WatchNotifications stream. The
 * recording transaction issues `pg_notify(RECORDED_CHANNEL, {id, userId})`;
 * Postgres delivers it only after commit (never for a rollback) to every
 * listening connection, so each replica's feed hears every notification and
 * forwards it to its own watchers of that user. One LISTEN connection per
 * process, whatever the number of watchers. Works the same on embedded PGlite
 * (one process there anyway).
 *
 * Delivery to a watcher is at-most-once and live only: a stream that is down
 * when a notification is recorded does not get it later; ListNotifications is
 * the durable record (a reconnecting client lists, then watches).
 */
import type { Listen } from '../../mesh/events/listen.js';
import { RECORDED_CHANNEL, type RecordedAnnouncement } from './repository.js';
import type { NotificationRow } from './schema.js';

export type NotificationListener = (row: NotificationRow) => void;

export interface NotificationFeedOptions {
  listen: Listen;
  /** Reads the announced row (committed by the time the announcement arrives). */
  load: (id: string) => Promise<NotificationRow | undefined>;
  onError?: (err: unknown) => void;
}

export class NotificationFeed {
  private readonly watchers = new Map<string, Set<NotificationListener>>();
  private unlisten?: () => Promise<void>;
  /** Announcements are handled one after another, so watchers get notifications in commit order. */
  private chain: Promise<void> = Promise.resolve();

  constructor(private readonly opts: NotificationFeedOptions) {}

  /** Starts listening; resolves once LISTEN is in place (notifications recorded after that are heard). */
  async start(): Promise<void> {
    if (this.unlisten) return;
    this.unlisten = await this.opts.listen(RECORDED_CHANNEL, (payload) => {
      this.chain = this.chain.then(() => this.announce(payload)).catch((err) => this.opts.onError?.(err));
    });
  }

  async stop(): Promise<void> {
    const unlisten = this.unlisten;
    this.unlisten = undefined;
    await unlisten?.();
    await this.chain;
  }

  /** Calls `listener` with each notification for `userId` recorded from now on; returns the unsubscribe. */
  subscribe(userId: string, listener: NotificationListener): () => void {
    let set = this.watchers.get(userId);
    if (!set) this.watchers.set(userId, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0 && this.watchers.get(userId) === set) this.watchers.delete(userId);
    };
  }

  /** Watchers of `userId` in this process (all users when omitted). */
  watcherCount(userId?: string): number {
    if (userId !== undefined) return this.watchers.get(userId)?.size ?? 0;
    let n = 0;
    for (const set of this.watchers.values()) n += set.size;
    return n;
  }

  private async announce(payload: string): Promise<void> {
    let a: RecordedAnnouncement;
    try {
      a = JSON.parse(payload) as RecordedAnnouncement;
    } catch {
      return;
    }
    // Most announcements concern users nobody watches here: skip the read.
    if (!this.watchers.get(a.userId)?.size) return;
    const row = await this.opts.load(a.id);
    if (!row) return;
    for (const listener of [...(this.watchers.get(row.userId) ?? [])]) {
      try {
        listener(row);
      } catch (err) {
        this.opts.onError?.(err);
      }
    }
  }
}
