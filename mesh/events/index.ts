// The event backbone: transactional outbox, relay, streams, durable consumers with inbox
// dedupe, dead letters. Generic over any protobuf message; see README.md beside this file.
export { backoffDelay, type BackoffOptions } from "./backoff.js";
export {
  ensureConsumer,
  PermanentEventError,
  startConsumer,
  type BatchEvent,
  type BatchEventHandler,
  type ConsumerHooks,
  type ConsumerOptions,
  type ConsumerStats,
  type EventHandler,
  type EventMeta,
  type RunningConsumer,
} from "./consumer.js";
export {
  discardDeadLetter,
  getDeadLetter,
  listDeadLetters,
  publishDeadLetter,
  replayDeadLetter,
  type DeadLetter,
  type ListDeadLettersOptions,
  type ReplayOptions,
} from "./dead-letter.js";
export { rowsOf, type EventsDb, type EventsTx } from "./db.js";
export * as eventHeaders from "./headers.js";
export { pruneInbox, recordInbox, recordInboxMany } from "./inbox.js";
export { listenFromDb, listenVia, type Listen } from "./listen.js";
export {
  deadLetterStream,
  deadLetterSubject,
  eventSubject,
  normalizeSubjectPrefix,
  packageOf,
  packageStream,
  streamForType,
  streamPrefix,
  subjectPrefixFromEnv,
  type StreamSpec,
} from "./naming.js";
export { announceCommitted, onOutboxCommitted, transactionWithEvents, withEventSignals } from "./commit-signal.js";
export { enqueueEvent, outboxChannel, prunePublished, type EnqueueOptions } from "./outbox.js";
export { publishEvent, publishRawEvent, type RawEvent } from "./publisher.js";
export { OutboxRelay, startRelay, type BatchResult, type RelayHooks, type RelayOptions, type RelayStats } from "./relay.js";
export { ensureStreams, type EnsureStreamsOptions } from "./streams.js";
export { bytea, inboxTable, outboxTable, type EventHeaders, type InboxTable, type OutboxTable } from "./tables.js";
