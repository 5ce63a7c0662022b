// The traffic policy the gateway consults for every upstream call:
//   route(ctx)            which target answers: stable or canary (pure choice, counted)
//   transport(route, t)   the Transport for a decoded call (Connect, gRPC-Web, REST):
//                         the canary's or `t`, mirroring the call when it was sampled
//   shadow(route, call)   mirror a finished call, fire-and-forget (the raw gRPC path
//                         calls it directly with the frames it proxied)
//   update(config)        hot reload: validates, then swaps the rules in one step;
//                         a bad config throws and the old rules stay
// Nothing here names a service: upstreams are the (protomesh.v1.service).name
// of the descriptors the gateway serves.
import { toBinary, type DescMessage, type DescMethod, type DescMethodUnary, type MessageShape } from "@bufbuild/protobuf";
import { Code, type Transport } from "@connectrpc/connect";
import { createMeshTransport } from "../../mesh/client.js";
import { createLogger } from "../../mesh/telemetry/logger.js";
import { selectVariant, type CanaryRequest, type Variant, type VariantReason } from "./canary.js";
import { sameGrpcBodies, sameMessageBytes } from "./compare.js";
import { checkTrafficConfig, parseTrafficConfig, type KnownUpstreams, type TrafficConfig } from "./config.js";
import { TrafficCounters, type TrafficStats } from "./metrics.js";
import { RawSessions, rawGrpcCall } from "./raw-grpc.js";
import { routedTransport, type MessageCall } from "./routed-transport.js";
import { planShadow, type ShadowPlan } from "./shadow-plan.js";
import { ShadowRunner, type ShadowLog, type ShadowResult } from "./shadow-runner.js";

/** What the policy needs to know about one call, known once the gateway admitted it. */
export interface TrafficContext extends CanaryRequest {
  readonly upstream: string;
  /** gRPC path "/package.Service/Method". */
  readonly method: string;
  /** The method's effective idempotency (proto option, then config). */
  readonly idempotent: boolean;
  readonly streaming?: boolean;
}

export interface RouteDecision {
  readonly upstream: string;
  readonly method: string;
  /** The "host:port" to call. */
  readonly target: string;
  readonly variant: Variant;
  readonly reason: VariantReason;
  /** Set when this call was sampled for mirroring (and may be mirrored). */
  readonly shadow?: ShadowPlan;
}

/** A finished call from the raw gRPC fast path: frames as proxied. */
export interface RawCall {
  readonly kind: "raw";
  readonly method: DescMethod;
  /** The headers sent upstream. */
  readonly headers: Readonly<Record<string, string | string[] | number | undefined>>;
  /** The request body (length-prefixed messages) as the client sent it. */
  readonly body: Uint8Array;
  /** gRPC status the client got (0 = OK). */
  readonly code: number;
  /** The response body the client got (unary calls; compared when present). */
  readonly response?: Uint8Array;
}

export type MirroredCall = MessageCall | RawCall;
export type { MessageCall };

export interface TrafficPolicyOptions {
  /** Stable target ("host:port") of each upstream the gateway serves. Its keys are the known upstreams. */
  readonly upstreams?: Readonly<Record<string, string>>;
  /** Public methods per upstream, to reject shadow settings for methods that do not exist. */
  readonly methods?: readonly { readonly upstream: string; readonly grpcPath: string }[];
  /** Transport for a canary or shadow target; mesh/client (one attempt: the gateway retries) by default. */
  readonly transportFor?: (upstream: string, target: string) => Transport;
  /** [0, 1); Math.random by default. */
  readonly random?: () => number;
  /** Where the per-shadow-call debug lines go. */
  readonly log?: ShadowLog;
}

export interface TrafficPolicy {
  readonly config: TrafficConfig;
  route(ctx: TrafficContext): RouteDecision;
  transport(route: RouteDecision, stable: Transport): Transport;
  shadow(route: RouteDecision, call: MirroredCall): void;
  update(config: unknown): void;
  stats(): TrafficStats;
  /** Shadow calls in flight. */
  inFlight(): number;
  /** Resolves once no shadow call is in flight. */
  idle(): Promise<void>;
  close(): void;
}

/** Validates `config` (the `traffic` section) and builds the policy; throws TrafficConfigError. */
export function createTrafficPolicy(config: unknown, options: TrafficPolicyOptions = {}): TrafficPolicy {
  const known: KnownUpstreams | undefined = options.upstreams
    ? new Map(
        Object.keys(options.upstreams).map((u) => [
          u,
          options.methods?.filter((m) => m.upstream === u).map((m) => m.grpcPath),
        ]),
      )
    : undefined;
  const validate = (raw: unknown): TrafficConfig => {
    const c = parseTrafficConfig(raw);
    if (known) checkTrafficConfig(c, known);
    return c;
  };
  const log = createLogger({ component: "gateway.traffic" });
  const describe = (c: TrafficConfig) =>
    Object.entries(c).map(([upstream, u]) => ({
      upstream,
      canary: u.canary && `${u.canary.percent}% -> ${u.canary.target}`,
      shadow: u.shadow && `${u.shadow.percent}% -> ${u.shadow.target}`,
    }));
  let current = validate(config);
  if (Object.keys(current).length > 0) log.info({ traffic: describe(current) }, "traffic rules applied");
  const random = options.random ?? Math.random;
  const counters = new TrafficCounters();
  const runner = new ShadowRunner(counters, options.log ?? log);
  const transports = new Map<string, Transport & { close?: () => void }>();
  const sessions = new RawSessions();

  const transportFor = (upstream: string, target: string): Transport => {
    const key = `${upstream}|${target}`;
    let t = transports.get(key);
    if (!t) {
      t = options.transportFor?.(upstream, target) ?? createMeshTransport({ target, retry: { maxAttempts: 1 } });
      transports.set(key, t);
    }
    return t;
  };

  const shadowHeaders = (h: Headers): Headers => {
    const out = new Headers(h);
    out.delete("grpc-timeout");
    out.set("x-mesh-shadow", "1");
    return out;
  };

  const sendMessage = (route: RouteDecision, plan: ShadowPlan, call: MessageCall) => {
    const t = transportFor(route.upstream, plan.target);
    const headers = shadowHeaders(call.headers);
    if (call.kind === "unary") {
      const method = call.method as DescMethodUnary<DescMessage, DescMessage>;
      return async (signal: AbortSignal, timeoutMs: number): Promise<ShadowResult> => {
        const res = await t.unary(method, signal, timeoutMs, headers, call.request);
        const primary = call.response;
        return {
          code: 0,
          sameBody: primary
            ? () => sameMessageBytes(method.output, toBinary(method.output, primary), toBinary(method.output, res.message as MessageShape<DescMessage>))
            : undefined,
        };
      };
    }
    return async (signal: AbortSignal, timeoutMs: number): Promise<ShadowResult> => {
      const res = await t.stream(call.method, signal, timeoutMs, headers, (async function* () {
        yield call.request;
      })());
      for await (const _ of res.message) {
        // Drained only: a stream is compared by its final status.
      }
      return { code: 0 };
    };
  };

  const sendRaw = (plan: ShadowPlan, call: RawCall) => {
    const path = `/${call.method.parent.typeName}/${call.method.name}`;
    const keepBody = call.method.methodKind === "unary" && call.response !== undefined;
    return async (signal: AbortSignal, timeoutMs: number): Promise<ShadowResult> => {
      const a = await rawGrpcCall(sessions.get(plan.target), path, call.headers, call.body, timeoutMs, signal, keepBody);
      const primary = call.response;
      return {
        code: a.code,
        sameBody: keepBody && primary && a.body ? () => sameGrpcBodies(call.method.output, primary, a.body!) : undefined,
      };
    };
  };

  const policy: TrafficPolicy = {
    get config() {
      return current;
    },

    route(ctx) {
      const rules = current[ctx.upstream];
      const stable = options.upstreams?.[ctx.upstream] ?? ctx.upstream;
      const choice = selectVariant(rules?.canary, ctx, random);
      if (rules?.canary) counters.routed(ctx.upstream, choice.variant, choice.reason);
      const target = choice.variant === "canary" && rules?.canary ? rules.canary.target : stable;
      const verdict = planShadow(rules?.shadow, { method: ctx.method, idempotent: ctx.idempotent, streaming: ctx.streaming ?? false }, random);
      if (!verdict.mirror && verdict.reason === "unsafe") runner.skipped(ctx.upstream, ctx.method, "unsafe_skipped");
      return {
        upstream: ctx.upstream,
        method: ctx.method,
        target,
        variant: choice.variant,
        reason: choice.reason,
        shadow: verdict.mirror ? verdict.plan : undefined,
      };
    },

    transport(route, stable) {
      const primary = route.variant === "canary" ? transportFor(route.upstream, route.target) : stable;
      return routedTransport(primary, route.shadow ? (call) => policy.shadow(route, call) : undefined);
    },

    shadow(route, call) {
      const plan = route.shadow;
      // UNAVAILABLE or CANCELLED: the client got no answer to compare with.
      if (!plan || call.code === Code.Unavailable || call.code === Code.Canceled) return;
      let send: (signal: AbortSignal, timeoutMs: number) => Promise<ShadowResult>;
      try {
        send = call.kind === "raw" ? sendRaw(plan, call) : sendMessage(route, plan, call);
      } catch {
        return; // a shadow must never fail the call it mirrors
      }
      runner.run({ upstream: route.upstream, method: route.method, plan, primaryCode: call.code, send });
    },

    update(config) {
      const next = validate(config);
      if (JSON.stringify(next) !== JSON.stringify(current)) log.info({ traffic: describe(next) }, "traffic rules applied");
      current = next;
    },

    stats: () => counters.snapshot(),
    inFlight: () => runner.inFlight(),
    idle: () => runner.idle(),

    close() {
      for (const t of transports.values()) t.close?.();
      transports.clear();
      sessions.close();
    },
  };
  return policy;
}
