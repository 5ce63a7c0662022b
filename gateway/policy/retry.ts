// Retries at the edge: only methods marked idempotent, only on UNAVAILABLE,
// with full-jitter exponential backoff inside the call's deadline, and under
// a retry budget per upstream so retries add at most ~20 % load: every call
// deposits `ratio` of a token, every retry spends one; a small reserve lets
// a quiet upstream be retried at all.
import { Code, ConnectError } from "@connectrpc/connect";

export class RetryBudget {
  private balance: number;
  constructor(
    readonly ratio = 0.2,
    private readonly reserve = 10,
  ) {
    this.balance = reserve;
  }
  /** Called once per original call. */
  deposit(): void {
    this.balance = Math.min(this.reserve + 100 * this.ratio, this.balance + this.ratio);
  }
  /** True (and spends a token) when a retry fits the budget. */
  tryWithdraw(): boolean {
    if (this.balance < 1) return false;
    this.balance -= 1;
    return true;
  }
}

export interface RetryOptions {
  readonly idempotent: boolean;
  readonly budget: RetryBudget;
  /** Absolute deadline (Date.now() ms), if any. */
  readonly deadline: number | undefined;
  readonly signal?: AbortSignal;
  readonly maxAttempts?: number;
  readonly baseDelayMs?: number;
  readonly maxDelayMs?: number;
  readonly onRetry?: (attempt: number, error: unknown) => void;
}

export function isRetryable(e: unknown): boolean {
  return e instanceof ConnectError && e.code === Code.Unavailable;
}

export async function withRetries<T>(fn: (attempt: number) => Promise<T>, o: RetryOptions): Promise<T> {
  o.budget.deposit();
  const maxAttempts = o.idempotent ? (o.maxAttempts ?? 3) : 1;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (e) {
      if (attempt >= maxAttempts || !isRetryable(e) || o.signal?.aborted) throw e;
      const delay = Math.random() * Math.min(o.maxDelayMs ?? 250, (o.baseDelayMs ?? 25) * 2 ** (attempt - 1));
      if (o.deadline !== undefined && Date.now() + delay >= o.deadline) throw e;
      if (!o.budget.tryWithdraw()) throw e;
      o.onRetry?.(attempt, e);
      await new Promise((r) => setTimeout(r, delay));
      if (o.signal?.aborted) throw e;
    }
  }
}
