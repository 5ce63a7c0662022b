// Canary routing and shadow traffic at the edge: see policy.ts for the API.
export { createTrafficPolicy } from "./policy.js";
export type { MirroredCall, MessageCall, RawCall, RouteDecision, TrafficContext, TrafficPolicy, TrafficPolicyOptions } from "./policy.js";
export { TrafficConfigError, parseTrafficConfig, checkTrafficConfig, type TrafficConfig } from "./config.js";
export { selectVariant, type Variant } from "./canary.js";
export type { ShadowOutcome } from "./compare.js";
export type { TrafficStats } from "./metrics.js";
