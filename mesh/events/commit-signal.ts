// Telling relays that outbox rows committed, without a NOTIFY inside the writer's
// transaction.
//
// A NOTIFY in a transaction makes Postgres take a global lock at commit and hold it
// across the commit's WAL flush: every notifying transaction of the whole server commits
// one after another, which caps writers at about one fsync per event. So
// `transactionWithEvents` runs the caller's transaction, and once it has committed wakes
// the relays of this process directly and sends one NOTIFY of its own (outside any
// writer's transaction, coalesced: at most one in flight per schema) for relays in other
// processes. Plain `db.transaction` + `enqueueEvent` still works: enqueueEvent then
// notifies inside the transaction, correct but slower under load.
//
// Under load that NOTIFY is a round trip per commit per service, and every relay of the
// process used to hear its own NOTIFY back and drain a second time for nothing. So when
// a relay of this process publishes the schema, no NOTIFY is sent at all: that relay
// keeps at it until it has run a batch under the schema's lock (relay.ts), and a batch
// under the lock publishes every committed row, whoever wrote it. Only a process without
// such a relay (a script, a tool) NOTIFYs; the NOTIFY carries this process's tag, and
// after one is sent the next waits NOTIFY_COALESCE_MS, so a burst of commits is heard once.
import { randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import { sql } from "drizzle-orm";
import type { EventsDb, EventsTx } from "./db.js";
import { outboxChannel } from "./naming.js";

const local = new EventEmitter();
/** The payload of this process's NOTIFYs: its relays were woken directly, and skip them. */
export const PROCESS_NOTIFY_TAG = `pm-${randomUUID()}`;
/** Least time between two commit NOTIFYs of one schema from this process. */
export const NOTIFY_COALESCE_MS = 20;
local.setMaxListeners(0);

/** Transactions opened by transactionWithEvents -> schemas that enqueued events in them. */
const pendingByTx = new WeakMap<object, Set<string>>();

/** Called by enqueueEvent: true when the commit will be announced after the fact. */
export function deferNotify(tx: EventsTx, schemaName: string): boolean {
  const pending = pendingByTx.get(tx);
  if (!pending) return false;
  pending.add(schemaName);
  return true;
}

/**
 * `db.transaction(fn)`, and after the commit: wake the relays that publish what `fn`
 * enqueued. Use it for every transaction that calls enqueueEvent.
 */
export async function transactionWithEvents<T>(
  db: EventsDb,
  fn: (tx: EventsTx) => Promise<T>,
  config?: Parameters<EventsDb["transaction"]>[1],
): Promise<T> {
  const schemas = new Set<string>();
  const result = await db.transaction(async (tx) => {
    pendingByTx.set(tx, schemas);
    return fn(tx);
  }, config);
  for (const schema of schemas) announceCommitted(db, schema);
  return result;
}

/**
 * The same database, whose `transaction()` is `transactionWithEvents`: wrap the service's
 * db once in main.ts and every existing `db.transaction(...)` + `enqueueEvent` gets the
 * post-commit wake, with no change at the call sites.
 */
export function withEventSignals<D extends EventsDb>(db: D): D {
  const transaction = (fn: (tx: EventsTx) => Promise<unknown>, config?: Parameters<EventsDb["transaction"]>[1]) =>
    transactionWithEvents(db, fn, config);
  return new Proxy(db, {
    get(target, prop) {
      if (prop === "transaction") return transaction;
      const value = Reflect.get(target, prop, target);
      // The driver client is handed over as it is: postgres.js' `Sql` is a function whose
      // methods (unsafe, listen, reserve) a bound copy would not carry, so the relay's
      // listenFromDb(db) and raw statements through `$client` would not find them.
      if (prop === "$client") return value;
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

/** Subscribes to commits announced in this process for `schemaName`. */
export function onOutboxCommitted(schemaName: string, fn: () => void): () => void {
  local.on(schemaName, fn);
  return () => local.off(schemaName, fn);
}

interface NotifyState {
  inFlight: boolean;
  again: boolean;
}
const notifyStates = new WeakMap<object, Map<string, NotifyState>>();

/** Wakes local relays now; with none here, other processes' relays through one coalesced NOTIFY. */
export function announceCommitted(db: EventsDb, schemaName: string): void {
  const channel = outboxChannel(schemaName);
  if (local.emit(schemaName)) return; // a relay here heard it, and sees it published (relay.ts)
  let states = notifyStates.get(db);
  if (!states) notifyStates.set(db, (states = new Map()));
  let st = states.get(schemaName);
  if (!st) states.set(schemaName, (st = { inFlight: false, again: false }));
  if (st.inFlight) {
    st.again = true;
    return;
  }
  const state = st;
  const send = async () => {
    state.inFlight = true;
    do {
      state.again = false;
      // A lost NOTIFY only costs latency: the relays' poll still finds the rows.
      await db.execute(sql`select pg_notify(${channel}, ${PROCESS_NOTIFY_TAG})`).catch(() => {});
      // Commits in the next few ms share the next NOTIFY.
      await new Promise((r) => setTimeout(r, NOTIFY_COALESCE_MS).unref());
    } while (state.again);
    state.inFlight = false;
  };
  void send();
}
