// Whether one call is mirrored, as a pure function: the upstream's shadow
// rule, refined per method, decides the share sampled; methods that are not
// idempotent are never mirrored unless the config allows it explicitly (a
// mirrored PlaceOrder would place a second order), and server streams only
// when asked for.
import { methodMatches, type ShadowMethodRule, type ShadowRule } from "./config.js";

export interface ShadowCandidate {
  /** gRPC path "/package.Service/Method". */
  readonly method: string;
  /** The method's effective idempotency (proto option, then config). */
  readonly idempotent: boolean;
  readonly streaming: boolean;
}

/** Where and how a sampled call is mirrored. */
export interface ShadowPlan {
  readonly target: string;
  readonly timeoutMs: number;
  readonly maxConcurrent: number;
}

export type ShadowVerdict =
  | { readonly mirror: true; readonly plan: ShadowPlan }
  | { readonly mirror: false; readonly reason: "no_shadow" | "not_sampled" | "unsafe" | "streaming" };

/** The per-method rule for a gRPC path: the full "package.Service/Method" key first, then the bare name. */
export function methodRule(rule: ShadowRule, grpcPath: string): ShadowMethodRule | undefined {
  const full = rule.methods[grpcPath.slice(1)];
  if (full) return full;
  for (const [k, v] of Object.entries(rule.methods)) if (!k.includes("/") && methodMatches(k, grpcPath)) return v;
  return undefined;
}

/** The verdict for every call of an upstream without shadow traffic: one object, not one per call. */
const noShadow: ShadowVerdict = Object.freeze({ mirror: false, reason: "no_shadow" });

/** `random` returns [0, 1). Unsafe and streaming calls are judged only once sampled, so their count stays a share. */
export function planShadow(
  rule: ShadowRule | undefined,
  call: ShadowCandidate,
  random: () => number = Math.random,
): ShadowVerdict {
  if (!rule) return noShadow;
  const m = methodRule(rule, call.method);
  const percent = m?.percent ?? rule.percent;
  if (percent <= 0 || random() * 100 >= percent) return { mirror: false, reason: "not_sampled" };
  if (!call.idempotent && !(m?.allowNonIdempotent ?? rule.allowNonIdempotent)) return { mirror: false, reason: "unsafe" };
  if (call.streaming && !(m?.streams ?? rule.streams)) return { mirror: false, reason: "streaming" };
  return { mirror: true, plan: { target: rule.target, timeoutMs: rule.timeoutMs, maxConcurrent: rule.maxConcurrent } };
}
