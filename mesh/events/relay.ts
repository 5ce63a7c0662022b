// The outbox relay: publishes unpublished outbox rows to JetStream in seq order and
// marks them published.
//
// One relay at a time per schema: each batch runs in a transaction that first takes
// `pg_try_advisory_xact_lock(<ns>, hashtext(schema))`. A replica that does not get the
// lock skips the round (another replica is publishing); if a commit of its own process
// woke it, it tries again soon, until a batch of its own under the lock has seen that
// commit (commit-signal.ts sends no NOTIFY when a relay here publishes the schema). The
// fallback poll covers the rest (a NOTIFY lost, a process that died). We do NOT use
// `FOR UPDATE SKIP LOCKED` batches: two replicas would then publish disjoint batches at
// the same time and a later event of an aggregate could reach the stream before an
// earlier one. A single publisher per schema keeps seq order, and one relay publishes
// thousands of events a second, more than one service produces.
//
// Per-aggregate order: rows are read in seq order; within a batch each aggregate's rows
// are published one after another (different aggregates in parallel), and a failed row
// ends its aggregate's chain, so no later event of that aggregate goes out before it. (seq is taken at
// insert time; a service that updates its aggregate row before enqueueing holds that row's
// lock, so two events of one aggregate get their seqs in commit order.)
//
// At-least-once: a crash between PubAck and commit republishes the rows; the stream's
// duplicate window (Nats-Msg-Id = event id) drops the copies and consumers' inboxes
// catch anything older than the window.
import { count, isNull, sql } from "drizzle-orm";
import { Events, type JetStreamClient, type NatsConnection } from "nats";
import { onOutboxCommitted, PROCESS_NOTIFY_TAG } from "./commit-signal.js";
import { rowFromDriver, rowsOf, type EventsDb } from "./db.js";
import { listenFromDb, type Listen } from "./listen.js";
import { outboxChannel, outboxSchemaName, prunePublished } from "./outbox.js";
import { publishRawEvent } from "./publisher.js";
import type { OutboxTable } from "./tables.js";

/** First key of the two-key advisory lock: keeps our locks apart from anyone else's. */
const LOCK_NAMESPACE = 0x706d_6f62; // "pmob"

export interface RelayHooks {
  /** After each published row: its type and how long it waited in the outbox. */
  onPublished?(info: { eventType: string; lagMs: number; duplicate: boolean }): void;
  /** After each batch: unpublished rows left. */
  onBacklog?(backlog: number): void;
  /** A batch failed (NATS down, database error); the relay retries with backoff. */
  onError?(err: unknown): void;
}

export interface RelayOptions {
  db: EventsDb;
  outbox: OutboxTable;
  js: JetStreamClient;
  /**
   * The connection behind `js`. Optional; when given, the relay pauses while it is
   * disconnected (instead of holding a transaction open until a publish times out) and
   * drains at once when it reconnects.
   */
  nc?: NatsConnection;
  /** How to LISTEN; default: detected from `db.$client` (postgres.js or PGlite). `false`: poll only. */
  listen?: Listen | false;
  /** Rows per transaction. Default 100. */
  batchSize?: number;
  /**
   * How long a wake-up waits before its batch, so the commits of a burst share one
   * transaction (a batch costs four round trips to Postgres however few rows it has).
   * Adds at most this much to an event's outbox lag. Default 10 ms; 0 drains at once.
   */
  coalesceMs?: number;
  /** After a local commit found another replica holding the lock, try again this soon. Default 25 ms. */
  lockedRetryMs?: number;
  /** Fallback poll, for lost notifications and a dead peer's lock. Default 2000 ms. */
  pollIntervalMs?: number;
  /** Backoff after a failed batch: doubles from min to max. Default 100..5000 ms. */
  retryMinMs?: number;
  retryMaxMs?: number;
  /** PubAck wait per row. Default 5000 ms. */
  publishTimeoutMs?: number;
  /** Delete published rows older than this, checked at most once a minute. Default 7 days; 0 keeps them. */
  retainPublishedMs?: number;
  hooks?: RelayHooks;
}

export interface BatchResult {
  /** False when another relay holds this schema's lock. */
  locked: boolean;
  published: number;
  duplicates: number;
  /** The first failed publish, after which the batch stopped. */
  error?: unknown;
  /** The batch was full: more rows are probably waiting. */
  full: boolean;
  backlog: number;
}

export interface RelayStats {
  published: number;
  duplicates: number;
  failedBatches: number;
  /** Unpublished rows after the last batch. */
  backlog: number;
  /** Outbox wait of the last published row. */
  lastLagMs: number;
  lastPublishedAt?: Date;
  lastError?: string;
}

export class OutboxRelay {
  readonly schemaName: string;
  private readonly opts: Required<Omit<RelayOptions, "nc" | "listen" | "hooks">> & Pick<RelayOptions, "nc" | "hooks">;
  private readonly listen: Listen | undefined;
  private unlisten?: () => Promise<void>;
  private offLocal?: () => void;
  private pollTimer?: NodeJS.Timeout;
  private retryTimer?: NodeJS.Timeout;
  private running: Promise<void> | null = null;
  private again = false;
  private stopped = true;
  private failStreak = 0;
  /** Commits announced in this process, and how many of them a batch under the lock has seen. */
  private localCommits = 0;
  private localSeen = 0;
  private connected = true;
  private lastPrune = 0;
  private readonly counters: RelayStats = { published: 0, duplicates: 0, failedBatches: 0, backlog: 0, lastLagMs: 0 };

  constructor(options: RelayOptions) {
    this.opts = {
      batchSize: 100,
      coalesceMs: 10,
      lockedRetryMs: 25,
      pollIntervalMs: 2000,
      retryMinMs: 100,
      retryMaxMs: 5000,
      publishTimeoutMs: 5000,
      retainPublishedMs: 7 * 24 * 3600_000,
      ...options,
    };
    this.schemaName = outboxSchemaName(options.outbox);
    this.listen = options.listen === false ? undefined : (options.listen ?? listenFromDb(options.db));
  }

  /** Starts listening and polling, and drains what is already waiting. */
  async start(): Promise<void> {
    if (!this.stopped) return;
    this.stopped = false;
    if (this.listen) {
      try {
        // A NOTIFY this process sent follows a commit that already woke us (onOutboxCommitted).
        this.unlisten = await this.listen(outboxChannel(this.schemaName), (payload) => {
          if (payload !== PROCESS_NOTIFY_TAG) this.wake();
        });
      } catch (err) {
        this.opts.hooks?.onError?.(err); // still correct without it: the poll finds the rows
      }
    }
    // A commit in this process: it sent no NOTIFY (commit-signal.ts), so this relay must
    // see its rows out itself, retrying while another replica holds the lock (loop()).
    this.offLocal = onOutboxCommitted(this.schemaName, () => {
      this.localCommits++;
      this.wake();
    });
    this.pollTimer = setInterval(() => this.wake(), this.opts.pollIntervalMs);
    this.pollTimer.unref();
    if (this.opts.nc) void this.watchConnection(this.opts.nc);
    this.wake();
  }

  /** Stops waking up and waits for the batch in flight to finish. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.pollTimer);
    clearTimeout(this.retryTimer);
    this.offLocal?.();
    const unlisten = this.unlisten;
    this.unlisten = undefined;
    await unlisten?.().catch(() => {});
    await this.running;
  }

  stats(): RelayStats {
    return { ...this.counters };
  }

  /** Asks for a drain soon; coalesces with one in flight. */
  wake(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.loop().finally(() => {
      this.running = null;
    });
  }

  private async loop(): Promise<void> {
    let full = false;
    do {
      // Wakes during the wait (or the batch before) are served by the next batch.
      if (this.opts.coalesceMs > 0 && !full) await new Promise((r) => setTimeout(r, this.opts.coalesceMs));
      this.again = false;
      if (!this.connected || this.stopped) return; // the reconnect event wakes us
      let result: BatchResult;
      const commitsBefore = this.localCommits; // committed before this batch reads: it sees them
      try {
        result = await this.drainOnce();
      } catch (err) {
        result = { locked: true, published: 0, duplicates: 0, error: err, full: false, backlog: this.counters.backlog };
      }
      if (result.error !== undefined) {
        this.counters.failedBatches++;
        this.counters.lastError = String((result.error as Error)?.message ?? result.error);
        this.opts.hooks?.onError?.(result.error);
        const delay = Math.min(this.opts.retryMaxMs, this.opts.retryMinMs * 2 ** this.failStreak++);
        clearTimeout(this.retryTimer);
        this.retryTimer = setTimeout(() => this.wake(), delay);
        this.retryTimer.unref();
        return;
      }
      this.failStreak = 0;
      full = result.locked && result.full;
      if (full) this.again = true;
      if (result.locked) this.localSeen = Math.max(this.localSeen, commitsBefore);
      else if (this.localSeen < this.localCommits && !this.again) {
        // Another replica is publishing, maybe a batch read before our commit: try again
        // soon rather than leave our rows to a poll.
        clearTimeout(this.retryTimer);
        this.retryTimer = setTimeout(() => this.wake(), this.opts.lockedRetryMs);
        this.retryTimer.unref();
      }
    } while (this.again && !this.stopped);
    await this.maybePrune();
  }

  /**
   * One batch: take the schema's lock, publish unpublished rows in seq order until the
   * first failure, mark the published ones. Safe to call directly (tests, scripts).
   */
  async drainOnce(): Promise<BatchResult> {
    const { db, outbox, js, batchSize, publishTimeoutMs, hooks } = this.opts;
    const result = await db.transaction(async (tx) => {
      // The lock and the read in one round trip. The statement's snapshot predates the
      // lock, so a row the previous holder published and committed in between still looks
      // unpublished in it; FOR UPDATE makes Postgres re-check such a row against its latest
      // committed version (published_at set: skipped), so it is not published twice. Rows
      // committed after the snapshot wait for the next batch, as before.
      const head = rowsOf<Record<string, unknown>>(
        await tx.execute(sql`
          with l as materialized (select pg_try_advisory_xact_lock(${LOCK_NAMESPACE}::int, hashtext(${this.schemaName})) as locked)
          select l.locked as relay_locked, o.* from l left join lateral (
            select * from ${outbox} where l.locked and published_at is null order by seq limit ${batchSize} for update
          ) o on true`),
      );
      if (!head[0]?.relay_locked) {
        return { locked: false, published: 0, duplicates: 0, full: false, backlog: this.counters.backlog } satisfies BatchResult;
      }
      const rows = head.filter((r) => r.id !== null && r.id !== undefined).map((r) => rowFromDriver(outbox, r));
      const done: string[] = [];
      let duplicates = 0;
      let error: unknown;
      // One chain per aggregate: its rows go out one after another (each waits for the
      // previous PubAck), chains run side by side. A failed row ends its chain, so no later
      // event of that aggregate overtakes it, and no chain starts a new row after any failure.
      const chains = new Map<string, typeof rows>();
      for (const row of rows) {
        const chain = chains.get(row.aggregateId);
        if (chain) chain.push(row);
        else chains.set(row.aggregateId, [row]);
      }
      await Promise.all(
        [...chains.values()].map(async (chain) => {
          for (const row of chain) {
            if (error !== undefined) return;
            try {
              const ack = await publishRawEvent(
                js,
                {
                  subject: row.subject,
                  payload: row.payload,
                  eventId: row.id,
                  eventType: row.eventType,
                  aggregateId: row.aggregateId,
                  headers: row.headers,
                },
                { timeoutMs: publishTimeoutMs },
              );
              done.push(row.id);
              if (ack.duplicate) duplicates++;
              const lagMs = Date.now() - row.createdAt.getTime();
              this.counters.lastLagMs = lagMs;
              hooks?.onPublished?.({ eventType: row.eventType, lagMs, duplicate: ack.duplicate });
            } catch (err) {
              error ??= err;
              return;
            }
          }
        }),
      );
      if (done.length > 0) {
        // One text for any number of ids (not `in ($1, ..., $n)`): statements are prepared per
        // text and connection (mesh/db-prepared.ts), and batches range from 1 to batchSize rows.
        await tx
          .update(outbox)
          .set({ publishedAt: sql`now()` })
          .where(sql`${outbox.id} = any(string_to_array(${done.join(",")}, ',')::uuid[])`);
      }
      // A partial batch left nothing behind except its failures (rows committed since are the
      // next round's); only a full batch needs a count.
      let backlog = rows.length - done.length;
      if (rows.length === batchSize) {
        const [left] = await tx.select({ n: count() }).from(outbox).where(isNull(outbox.publishedAt));
        backlog = Number(left?.n ?? 0);
      }
      return {
        locked: true,
        published: done.length,
        duplicates,
        error,
        full: rows.length === batchSize && error === undefined,
        backlog,
      } satisfies BatchResult;
    });
    if (result.locked) {
      this.counters.published += result.published;
      this.counters.duplicates += result.duplicates;
      this.counters.backlog = result.backlog;
      if (result.published > 0) this.counters.lastPublishedAt = new Date();
      hooks?.onBacklog?.(result.backlog);
    }
    return result;
  }

  private async watchConnection(nc: NatsConnection): Promise<void> {
    for await (const s of nc.status()) {
      if (this.stopped) break;
      if (s.type === Events.Disconnect) this.connected = false;
      if (s.type === Events.Reconnect) {
        this.connected = true;
        this.failStreak = 0;
        this.wake();
      }
    }
  }

  private async maybePrune(): Promise<void> {
    const { retainPublishedMs, db, outbox } = this.opts;
    if (!retainPublishedMs || Date.now() - this.lastPrune < 60_000) return;
    this.lastPrune = Date.now();
    try {
      await prunePublished(db, outbox, retainPublishedMs);
    } catch (err) {
      this.opts.hooks?.onError?.(err);
    }
  }
}

/** Creates and starts a relay. */
export async function startRelay(options: RelayOptions): Promise<OutboxRelay> {
  const relay = new OutboxRelay(options);
  await relay.start();
  return relay;
}
