// Runtime policy overrides from the mesh's NATS KV config bucket (mesh/live-config.ts),
// layered over the gateway's config file. Keys, as for every mesh process:
//
//   timeout_ms.<package.Service>[.<Method>]   deadline of upstream calls, ms
//   rate_limit.<upstream> | rate_limit.<package.Service>[.<Method>]   { requests, periodMs, burst }
//   breaker | breaker.<upstream>                                       { windowMs, minRequests, errorPercent, ... }
//   log_level | log_level.gateway                                      followed by the logger itself
//
// The overlay is a pure function of (file config, live values): a file reload and a KV put both
// end in the same `setConfig(overlay(file))`, so neither can undo the other. Values were already
// validated by live-config (a bad put is logged and ignored there), and the result goes through
// the same setConfig as a file reload, so calls in flight keep the policy they were admitted with.
import type { LiveConfig } from "../mesh/live-config.js";
import type { meshLiveSettings } from "../mesh/live-config.js";
import type { GatewayConfig, MethodOverride } from "./config.js";
import type { GatewayMethod } from "./descriptors.js";

export type MeshLiveConfig = LiveConfig<typeof meshLiveSettings>;

/** "/shop.order.v1.OrderService/PlaceOrder" -> "shop.order.v1.OrderService.PlaceOrder" (the live-config name). */
function dottedName(m: GatewayMethod): string {
  return m.grpcPath.slice(1).replace("/", ".");
}

/** The file config with every live override applied; `base` is not changed. */
export function overlayLiveValues(base: GatewayConfig, live: MeshLiveConfig, methods: readonly GatewayMethod[]): GatewayConfig {
  const methodOverrides: Record<string, MethodOverride> = { ...base.methods };
  const services: Record<string, { breaker?: GatewayConfig["services"][string]["breaker"] }> = { ...base.services };
  for (const m of methods) {
    const key = m.grpcPath.slice(1);
    const name = dottedName(m);
    const timeoutMs = live.get("timeout_ms", name);
    // Object families merge general-first: the upstream's key, then the method's dotted chain.
    const merged = { ...live.get("rate_limit", m.upstream), ...live.get("rate_limit", name) };
    const rateLimit = Object.keys(merged).length > 0 ? merged : undefined;
    if (timeoutMs === undefined && rateLimit === undefined) continue;
    const own = methodOverrides[key] ?? {};
    methodOverrides[key] = {
      ...own,
      ...(timeoutMs !== undefined ? { timeoutMs } : {}),
      ...(rateLimit !== undefined ? { rateLimit: { ...(own.rateLimit ?? {}), ...rateLimit } } : {}),
    };
  }
  for (const upstream of new Set(methods.map((m) => m.upstream))) {
    const breaker = live.get("breaker", upstream);
    if (Object.keys(breaker).length > 0) services[upstream] = { ...services[upstream], breaker: { ...services[upstream]?.breaker, ...breaker } };
  }
  return { ...base, methods: methodOverrides, services };
}
