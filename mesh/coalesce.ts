/**
 * Coalesces concurrent calls of one kind into batch calls, with no timer.
 *
 * At most one batch is in flight. A call that arrives while none is goes out
 * at once, alone (sendOne); calls that arrive while one is in flight wait for
 * it and then go out together (sendBatch), as many as fit. So an idle process
 * sends each call as before, with no added latency, and a busy one sends
 * fewer, larger calls: the batch grows with the load.
 *
 * A straggler does not hold the line: with `stragglerMs`, a batch still in
 * flight after that long stops counting, and the calls waiting behind it go
 * out (up to `maxInFlight` batches at once). One slow answer (a slow card at
 * the payment processor) then delays the calls batched with it, not every
 * call that arrives while it lasts.
 *
 * sendBatch answers one outcome per input, in input order: the value, or the
 * Error that input's call of its own would have failed with (so one refusal
 * fails none of the others). When sendBatch itself fails (the batch call was
 * not answered), that error reaches every input of the batch: the callers
 * retry as they would a call of their own, so the batched operation must be
 * idempotent. When `splitOn` says the batch call's error is about the batch
 * as a whole (the peer has no batch method yet, in a rolling deploy: an
 * UNIMPLEMENTED; one input spoiled a shared request), each input is sent
 * again alone and hears its own outcome.
 *
 * A batch runs outside any one caller's call context (mesh/call-context):
 * one caller's deadline or cancellation must not fail the others' calls. Its
 * deadline is the batch method's own. Its trace is its first input's (a lone
 * call, or a split one, is traced as its own caller's): without that, every
 * batch would run in the trace of whichever caller started the first one (the
 * next batch is sent from the previous one's completion), one trace growing
 * for as long as the load lasts. A batch of two or more also gets a span of
 * its own ("coalesce <name>", INTERNAL, in the first input's trace) with a
 * link to every other input's span, so each of those callers' traces can
 * still be followed to the batch call that carried it.
 *
 * Used by the order service for calls (prices.ts: catalog lookups;
 * saga-ports.ts: the saga's inventory and payment calls) and for its own
 * writes (place-batch.ts: PlaceOrder's inserts; step-store.ts and
 * finish-batch.ts: the saga's step and final writes), each a statement and a
 * commit shared by the concurrent callers.
 */
import { currentTraceContext, runWithCallContext, runWithTraceContext } from './call-context.js';
import { runInBatchSpan } from './telemetry/batch-span.js';

export interface CoalescerOptions<In, Out> {
  /** What is coalesced, for the batch span's name ("coalesce <name>"); default "batch". */
  name?: string;
  /** A lone call: the batch of one, as a call of its own. */
  sendOne(input: In): Promise<Out>;
  /** Two or more: one outcome per input, in order, a value or that input's own Error. */
  sendBatch(inputs: In[]): Promise<(Out | Error)[]>;
  /** Most inputs per batch (default 100). */
  maxItems?: number;
  /** Whether `next` still fits beside `batch` (besides maxItems); the first input always goes. */
  fits?(batch: readonly In[], next: In): boolean;
  /** Whether a failed sendBatch should be retried as one sendOne per input (default: never). */
  splitOn?(err: unknown): boolean;
  /** After this long in flight, a batch no longer holds back the next one (default: it always does). */
  stragglerMs?: number;
  /** Most batches in flight at once, stragglers included (default 4; only reached with stragglerMs). */
  maxInFlight?: number;
}

interface Waiting<In, Out> {
  input: In;
  /** The caller's trace context (mesh/call-context), for the call that carries this input. */
  trace: unknown;
  resolve(value: Out): void;
  reject(err: unknown): void;
}

export class Coalescer<In, Out> {
  readonly #options: CoalescerOptions<In, Out>;
  readonly #maxItems: number;
  readonly #maxInFlight: number;
  #queue: Waiting<In, Out>[] = [];
  /** Batches in flight that still hold the next one back (0 or 1). */
  #holding = 0;
  /** Batches in flight, stragglers included. */
  #inFlight = 0;
  /** Calls sent (alone or batched) and inputs answered by them, for tests and the bench's account. */
  calls = 0;
  inputs = 0;

  constructor(options: CoalescerOptions<In, Out>) {
    this.#options = options;
    this.#maxItems = options.maxItems ?? 100;
    this.#maxInFlight = options.maxInFlight ?? 4;
  }

  /** The outcome `input` would have had from a call of its own. */
  call(input: In): Promise<Out> {
    return new Promise<Out>((resolve, reject) => {
      this.#queue.push({ input, trace: currentTraceContext(), resolve, reject });
      if (this.#canSend()) this.#flush();
    });
  }

  #canSend(): boolean {
    return this.#holding === 0 && this.#inFlight < this.#maxInFlight;
  }

  /** Sends what waits, as much as fits one batch; comes back while anything is left. */
  #flush(): void {
    const batch: Waiting<In, Out>[] = [];
    const inputs: In[] = [];
    while (this.#queue.length > 0 && batch.length < this.#maxItems) {
      const next = this.#queue[0]!;
      if (batch.length > 0 && this.#options.fits && !this.#options.fits(inputs, next.input)) break;
      this.#queue.shift();
      batch.push(next);
      inputs.push(next.input);
    }
    if (batch.length === 0) return;
    this.#holding++;
    this.#inFlight++;
    let holding = true;
    const release = () => {
      if (!holding) return;
      holding = false;
      this.#holding--;
    };
    const straggler =
      this.#options.stragglerMs === undefined
        ? undefined
        : setTimeout(() => {
            release();
            if (this.#queue.length > 0 && this.#canSend()) this.#flush();
          }, this.#options.stragglerMs);
    straggler?.unref?.();
    void runWithCallContext({ header: new Headers() }, () => this.#traced(batch, () => this.#send(batch, inputs))).finally(() => {
      clearTimeout(straggler);
      release();
      this.#inFlight--;
      if (this.#queue.length > 0 && this.#canSend()) this.#flush();
    });
  }

  /** Runs `send` in the first input's trace; a batch inside a span linked to the other inputs' spans. */
  #traced(batch: Waiting<In, Out>[], send: () => Promise<void>): Promise<void> {
    return runInBatchSpan(`coalesce ${this.#options.name ?? 'batch'}`, batch.map((w) => w.trace), {}, send);
  }

  async #send(batch: Waiting<In, Out>[], inputs: In[]): Promise<void> {
    this.calls++;
    this.inputs += batch.length;
    if (batch.length === 1) {
      const only = batch[0]!;
      await this.#options.sendOne(only.input).then(only.resolve, only.reject);
      return;
    }
    let outcomes: (Out | Error)[];
    try {
      outcomes = await this.#options.sendBatch(inputs);
      if (outcomes.length !== batch.length) {
        throw new Error(`a batch of ${batch.length} was answered with ${outcomes.length} outcomes`);
      }
    } catch (err) {
      if (this.#options.splitOn?.(err)) {
        this.calls += batch.length;
        await Promise.all(batch.map((w) => runWithTraceContext(w.trace, () => this.#options.sendOne(w.input)).then(w.resolve, w.reject)));
        return;
      }
      for (const w of batch) w.reject(err);
      return;
    }
    batch.forEach((w, i) => {
      const outcome = outcomes[i]!;
      if (outcome instanceof Error) w.reject(outcome);
      else w.resolve(outcome);
    });
  }
}
