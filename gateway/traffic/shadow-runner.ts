// Running shadow calls fire-and-forget: the caller hands over a finished call
// and returns at once; the mirrored call starts on a later turn of the event
// loop (after the client's response is on its way), under its own deadline,
// within a bound of calls in flight per upstream (over the bound the call is
// dropped and counted, never queued), and its outcome goes to the counters
// and a debug log line. Nothing it does can reach the client's response:
// every failure ends as an outcome.
import { Code, ConnectError } from "@connectrpc/connect";
import { classifyShadow, type ShadowOutcome } from "./compare.js";
import type { TrafficCounters } from "./metrics.js";
import type { ShadowPlan } from "./shadow-plan.js";

/** What a shadow call answered: its gRPC status and, for unary calls, what to compare. */
export interface ShadowResult {
  readonly code: number;
  /** Compares the shadow's response with the client's; absent: status only. */
  readonly sameBody?: () => boolean;
}

export interface ShadowJob {
  readonly upstream: string;
  /** gRPC path "/package.Service/Method". */
  readonly method: string;
  readonly plan: ShadowPlan;
  /** The status the client got. */
  readonly primaryCode: number;
  /** Sends the mirrored call; must honor `signal` (aborted at the shadow deadline). */
  send(signal: AbortSignal, timeoutMs: number): Promise<ShadowResult>;
}

export interface ShadowLog {
  debug(obj: object, msg?: string): void;
}

const wireGraceMs = 50;

export function codeOf(e: unknown): number {
  if (e instanceof ConnectError) return e.code;
  if (e instanceof Error && (e.name === "AbortError" || e.name === "TimeoutError")) return Code.Canceled;
  return Code.Unavailable;
}

export class ShadowRunner {
  private readonly inflight = new Map<string, number>();
  private total = 0;
  private waiters: Array<() => void> = [];

  constructor(
    private readonly counters: TrafficCounters,
    private readonly log: ShadowLog,
  ) {}

  /** Shadow calls in flight, per upstream or in all. */
  inFlight(upstream?: string): number {
    return upstream === undefined ? this.total : (this.inflight.get(upstream) ?? 0);
  }

  /** Resolves once no shadow call is in flight (tests, shutdown). */
  idle(): Promise<void> {
    return this.total === 0 ? Promise.resolve() : new Promise((r) => this.waiters.push(r));
  }

  /** Counts a call that was sampled but may not be mirrored. */
  skipped(upstream: string, method: string, outcome: Extract<ShadowOutcome, "unsafe_skipped">): void {
    this.counters.shadow(upstream, method, outcome);
  }

  /** Starts the job in the background; returns at once. */
  run(job: ShadowJob): void {
    const n = this.inflight.get(job.upstream) ?? 0;
    if (n >= job.plan.maxConcurrent) {
      this.record(job, "dropped", { inflight: n });
      return;
    }
    this.inflight.set(job.upstream, n + 1);
    this.total++;
    setImmediate(() => void this.execute(job));
  }

  private async execute(job: ShadowJob): Promise<void> {
    const started = performance.now();
    const ac = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      ac.abort(new ConnectError("shadow deadline exceeded", Code.DeadlineExceeded));
    }, job.plan.timeoutMs);
    let result: ShadowResult;
    try {
      // The wire deadline is a little later than ours, so a shadow that is
      // too slow always ends as our "timeout", not as the server's status.
      result = await job.send(ac.signal, job.plan.timeoutMs + wireGraceMs);
    } catch (e) {
      result = { code: codeOf(e) };
    } finally {
      clearTimeout(timer);
    }
    let outcome: ShadowOutcome;
    try {
      outcome = classifyShadow(job.primaryCode, result.code, timedOut, result.sameBody);
    } catch {
      outcome = "body_mismatch";
    }
    this.release(job.upstream);
    this.record(job, outcome, {
      primaryCode: Code[job.primaryCode] ?? "OK",
      shadowCode: Code[result.code] ?? "OK",
      ms: Math.round(performance.now() - started),
    });
  }

  private release(upstream: string): void {
    const n = (this.inflight.get(upstream) ?? 1) - 1;
    if (n <= 0) this.inflight.delete(upstream);
    else this.inflight.set(upstream, n);
    if (--this.total === 0) {
      const w = this.waiters;
      this.waiters = [];
      for (const f of w) f();
    }
  }

  private record(job: ShadowJob, outcome: ShadowOutcome, detail: object): void {
    this.counters.shadow(job.upstream, job.method, outcome);
    this.log.debug(
      { upstream: job.upstream, method: job.method, target: job.plan.target, outcome, ...detail },
      `shadow ${job.method}: ${outcome}`,
    );
  }
}
