// Deadlines: the method's timeout from its option (or config), a client's
// shorter deadline honored, a longer one capped.

const grpcUnits: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 0.000001 };

/** Parses a grpc-timeout header ("100m", "5S"); undefined when absent or malformed. */
export function parseGrpcTimeout(value: string | null | undefined): number | undefined {
  if (!value) return undefined;
  const m = /^(\d{1,8})([HMSmun])$/.exec(value);
  if (!m) return undefined;
  return Number(m[1]) * grpcUnits[m[2]];
}

/** Formats milliseconds as a grpc-timeout header value. */
export function formatGrpcTimeout(ms: number): string {
  const n = Math.max(1, Math.ceil(ms));
  return n < 1e8 ? `${n}m` : `${Math.min(99_999_999, Math.ceil(n / 1000))}S`;
}

/** Parses Connect-Timeout-Ms; undefined when absent or malformed. */
export function parseConnectTimeout(value: string | null | undefined): number | undefined {
  if (!value || !/^\d{1,10}$/.test(value)) return undefined;
  return Number(value);
}

/**
 * The deadline of an upstream call in ms from now: the smaller of the
 * method's timeout and the client's; `fallbackMs` when neither is set
 * (undefined: no deadline, e.g. for long server streams).
 */
export function effectiveTimeout(
  methodMs: number | undefined,
  clientMs: number | undefined,
  fallbackMs: number | undefined,
): number | undefined {
  // Per call: no arrays.
  const m = methodMs !== undefined && methodMs > 0 ? methodMs : undefined;
  const c = clientMs !== undefined && clientMs > 0 ? clientMs : undefined;
  if (m === undefined) return c ?? fallbackMs;
  return c === undefined ? m : Math.min(m, c);
}
