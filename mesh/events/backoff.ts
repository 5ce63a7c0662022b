// Redelivery delays for failed handlers.

export interface BackoffOptions {
  /** Delay after the first failed delivery. Default 500 ms. */
  initialMs?: number;
  /** Upper bound. Default 60 s. */
  maxMs?: number;
  /** Growth per delivery. Default 2. */
  factor?: number;
  /** Random spread, 0..1, so a burst of failures does not come back as a burst. Default 0.2. */
  jitter?: number;
}

/** Delay before delivery number `deliveryCount + 1`, given `deliveryCount` (1-based) failed. */
export function backoffDelay(deliveryCount: number, opts: BackoffOptions = {}, random: () => number = Math.random): number {
  const { initialMs = 500, maxMs = 60_000, factor = 2, jitter = 0.2 } = opts;
  const n = Math.max(1, Math.floor(deliveryCount));
  const base = Math.min(maxMs, initialMs * factor ** (n - 1));
  const spread = base * jitter * (random() * 2 - 1);
  return Math.max(0, Math.min(maxMs, Math.round(base + spread)));
}
