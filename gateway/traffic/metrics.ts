// Counters for canary routing and shadow traffic: Prometheus series on the
// process registry (served at the gateway's /metrics) and the same figures
// per policy instance, so a test or an admin endpoint can read them directly.
import { Counter } from "prom-client";
import { metricsRegistry } from "../../mesh/telemetry/metrics.js";
import type { Variant, VariantReason } from "./canary.js";
import type { ShadowOutcome } from "./compare.js";

const routed = new Counter({
  name: "mesh_traffic_routed_total",
  help: "Calls to upstreams with a canary, by upstream, variant (stable, canary) and why it was chosen.",
  labelNames: ["upstream", "variant", "reason"],
  registers: [metricsRegistry],
});

const shadowed = new Counter({
  name: "mesh_traffic_shadow_total",
  help: "Shadow (mirrored) calls by upstream, method and outcome (match, status_mismatch, body_mismatch, timeout, dropped, unsafe_skipped).",
  labelNames: ["upstream", "grpc_method", "outcome"],
  registers: [metricsRegistry],
});

export interface TrafficStats {
  /** "upstream variant" -> calls. */
  readonly routed: Record<string, number>;
  /** "upstream outcome" -> shadow calls. */
  readonly shadow: Record<string, number>;
}

export class TrafficCounters {
  private readonly routedCounts = new Map<string, number>();
  private readonly shadowCounts = new Map<string, number>();

  routed(upstream: string, variant: Variant, reason: VariantReason): void {
    routed.inc({ upstream, variant, reason });
    const k = `${upstream} ${variant}`;
    this.routedCounts.set(k, (this.routedCounts.get(k) ?? 0) + 1);
  }

  shadow(upstream: string, grpcPath: string, outcome: ShadowOutcome): void {
    shadowed.inc({ upstream, grpc_method: grpcPath.slice(grpcPath.lastIndexOf("/") + 1), outcome });
    const k = `${upstream} ${outcome}`;
    this.shadowCounts.set(k, (this.shadowCounts.get(k) ?? 0) + 1);
  }

  snapshot(): TrafficStats {
    return { routed: Object.fromEntries(this.routedCounts), shadow: Object.fromEntries(this.shadowCounts) };
  }
}
