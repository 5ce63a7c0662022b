// Token-bucket rate limiting per (key x method).
//
// Memory is bounded: exact buckets live in an LRU of `maxKeys` entries. A
// bucket pushed out of the LRU is not forgotten: its state is folded into a
// fixed array of slots indexed by a hash of its id, and a key that comes back
// starts from its slot (tokens it had, plus the refill since), never from a
// full bucket. Colliding keys share a slot and may only be judged more
// strictly, never more leniently (a slot keeps the lowest fill folded into it).
//
// N gateway replicas: each replica enforces `limit / replicas` (rate and
// burst), so with a load balancer spreading clients evenly the configured
// limit holds in total without a shared store on the request path. It scales
// to any N with no coordination; the price is that a client pinned to one
// replica (HTTP/2 keeps one connection) gets 1/N of its limit, which is why
// `replicas` is explicit config (GATEWAY_REPLICAS), set by the deployment.
import type { RateLimitSpec } from "../descriptors.js";

export interface RateDecision {
  readonly allowed: boolean;
  /** Tokens left after this request (floored). */
  readonly remaining: number;
  /** Bucket capacity as enforced on this replica. */
  readonly limit: number;
  /** Seconds of the policy window: how long an empty bucket takes to fill. */
  readonly windowSec: number;
  /** Seconds until the bucket is full again. */
  readonly resetSec: number;
  /** Seconds until one token is available (0 when allowed). */
  readonly retryAfterSec: number;
  /** Shadow mode: the limit was exceeded but the request let through. */
  readonly shadowRejected: boolean;
}

interface Bucket {
  tokens: number;
  at: number;
}

export interface RateLimiterOptions {
  /** Most exact buckets kept; 10 000 by default. */
  readonly maxKeys?: number;
  /** Slots for evicted buckets; 65 536 by default. */
  readonly overflowSlots?: number;
  /** Replicas sharing the limit; each enforces 1/replicas of it. */
  readonly replicas?: number;
  /** Count but never reject. */
  readonly shadow?: boolean;
  readonly now?: () => number;
}

export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private readonly maxKeys: number;
  private readonly slotTokens: Float64Array;
  private readonly slotAt: Float64Array;
  private readonly now: () => number;
  replicas: number;
  shadow: boolean;

  constructor(options: RateLimiterOptions = {}) {
    this.maxKeys = options.maxKeys ?? 10_000;
    const slots = options.overflowSlots ?? 65_536;
    this.slotTokens = new Float64Array(slots);
    this.slotAt = new Float64Array(slots).fill(-1);
    this.replicas = Math.max(1, options.replicas ?? 1);
    this.shadow = options.shadow ?? false;
    this.now = options.now ?? (() => performance.now());
  }

  get size(): number {
    return this.buckets.size;
  }

  /** Takes one token for `key` under `spec`. */
  take(id: string, spec: RateLimitSpec): RateDecision {
    const now = this.now();
    const burst = Math.max(1, spec.burst / this.replicas);
    const perMs = spec.requests / this.replicas / spec.periodMs;
    let b = this.buckets.get(id);
    if (b) {
      this.buckets.delete(id); // re-insert below: most recently used last
    } else {
      b = this.fromSlot(id, burst, now);
    }
    b.tokens = Math.min(burst, b.tokens + (now - b.at) * perMs);
    b.at = now;
    let allowed = b.tokens >= 1;
    if (allowed) b.tokens -= 1;
    const shadowRejected = !allowed && this.shadow;
    if (shadowRejected) allowed = true;
    this.buckets.set(id, b);
    if (this.buckets.size > this.maxKeys) this.evictOldest();
    const missing = burst - b.tokens;
    return {
      allowed,
      remaining: Math.max(0, Math.floor(b.tokens)),
      limit: Math.floor(burst),
      windowSec: Math.ceil(burst / perMs / 1000),
      resetSec: Math.ceil(missing / perMs / 1000),
      retryAfterSec: allowed ? 0 : Math.max(1, Math.ceil((1 - b.tokens) / perMs / 1000)),
      shadowRejected,
    };
  }

  private evictOldest(): void {
    const oldest = this.buckets.keys().next();
    if (oldest.done) return;
    const b = this.buckets.get(oldest.value)!;
    this.buckets.delete(oldest.value);
    const s = this.slotOf(oldest.value);
    // Keep the stricter state: the fewest tokens, projected to the same time.
    if (this.slotAt[s] < 0 || b.tokens < this.slotTokens[s]) {
      this.slotTokens[s] = b.tokens;
      this.slotAt[s] = b.at;
    }
  }

  private fromSlot(id: string, burst: number, now: number): Bucket {
    const s = this.slotOf(id);
    if (this.slotAt[s] < 0) return { tokens: burst, at: now };
    return { tokens: this.slotTokens[s], at: this.slotAt[s] };
  }

  private slotOf(id: string): number {
    // FNV-1a: cheap and well spread for short keys.
    let h = 0x811c9dc5;
    for (let i = 0; i < id.length; i++) {
      h ^= id.charCodeAt(i);
      h = Math.imul(h, 0x01000193);
    }
    return (h >>> 0) % this.slotTokens.length;
  }
}

/**
 * Response headers per draft-ietf-httpapi-ratelimit-headers (structured
 * fields): the policy (quota q over window w) and the current state
 * (remaining r, seconds to reset t); Retry-After on rejection.
 */
export function rateLimitHeaders(d: RateDecision, policyName = "default"): Record<string, string> {
  const h: Record<string, string> = {
    "ratelimit-policy": `"${policyName}";q=${d.limit};w=${d.windowSec}`,
    ratelimit: `"${policyName}";r=${d.remaining};t=${d.resetSec}`,
  };
  if (!d.allowed) h["retry-after"] = String(d.retryAfterSec);
  return h;
}

/** The client key a limit counts against. */
export function rateLimitKey(
  spec: RateLimitSpec,
  who: { ip: string; userId: string | undefined; apiKey: string | null | undefined },
): string {
  if (spec.key === "user" && who.userId) return `u:${who.userId}`;
  if (spec.key === "api_key" && who.apiKey) return `k:${who.apiKey}`;
  return `ip:${who.ip}`;
}
