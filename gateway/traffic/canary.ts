// Choosing stable or canary for one call, as a pure function: an explicit
// override header wins; otherwise the sticky key's bucket decides, so one
// user (or one client IP) consistently sees one version; with no key at all
// the choice is random at the configured share.
import type { CanaryRule } from "./config.js";
import { stickyBucket, underPercent } from "./sticky-hash.js";

export type Variant = "stable" | "canary";
/** Why a variant was chosen (a metric label and a debugging aid). */
export type VariantReason = "header" | "user" | "ip" | "random" | "no_canary";

export interface CanaryRequest {
  /** The client's request headers (the override header is read here). */
  readonly headers: Headers;
  /** The user id from the verified token, never from a client header. */
  readonly userId?: string;
  /** The client IP as the gateway determined it. */
  readonly ip?: string;
}

export interface VariantChoice {
  readonly variant: Variant;
  readonly reason: VariantReason;
}

const forceCanary = new Set(["always", "canary"]);
/** The answer for every call of an upstream without a canary: one object, not one per call. */
const noCanary: VariantChoice = Object.freeze({ variant: "stable", reason: "no_canary" });
const forceStable = new Set(["never", "stable"]);

/** The override the header asks for; undefined when absent or not understood. */
export function headerOverride(rule: CanaryRule, headers: Headers): Variant | undefined {
  if (!rule.header) return undefined;
  const v = headers.get(rule.header)?.trim().toLowerCase();
  if (!v) return undefined;
  if (forceCanary.has(v)) return "canary";
  if (forceStable.has(v)) return "stable";
  return undefined;
}

/** The sticky key of a request under the rule: "u:<id>", "ip:<addr>", or undefined (random). */
export function stickyKey(rule: CanaryRule, req: CanaryRequest): { key: string; kind: "user" | "ip" } | undefined {
  if (rule.sticky === "user" && req.userId) return { key: `u:${req.userId}`, kind: "user" };
  if (rule.sticky !== "none" && req.ip && req.ip !== "unknown") return { key: `ip:${req.ip}`, kind: "ip" };
  return undefined;
}

/** Stable or canary for this request. `random` returns [0, 1). */
export function selectVariant(
  rule: CanaryRule | undefined,
  req: CanaryRequest,
  random: () => number = Math.random,
): VariantChoice {
  if (!rule) return noCanary;
  const forced = headerOverride(rule, req.headers);
  if (forced) return { variant: forced, reason: "header" };
  const k = stickyKey(rule, req);
  if (k) return { variant: underPercent(stickyBucket(rule.salt, k.key), rule.percent) ? "canary" : "stable", reason: k.kind };
  return { variant: random() * 100 < rule.percent ? "canary" : "stable", reason: "random" };
}
