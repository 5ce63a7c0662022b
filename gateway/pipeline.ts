// The policy pipeline every protocol goes through: authenticate, authorize,
// rate limit, pick the breaker and the deadline (admission), then call the
// upstream through the breaker with retries (invocation).
import { randomUUID } from "node:crypto";
import type { DescMessage, DescMethodServerStreaming, DescMethodUnary, MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type Transport } from "@connectrpc/connect";
import type { CircuitBreakerPolicy } from "cockatiel";
import { effectiveBreaker, effectivePolicy, type GatewayConfig } from "./config.js";
import type { GatewayMethod, GatewayService, MethodPolicySpec } from "./descriptors.js";
import { EdgeError } from "./errors.js";
import { authorize, type Authenticator, type Caller } from "./policy/auth.js";
import { Breakers, throughBreaker } from "./policy/circuit-breaker.js";
import { RateLimiter, rateLimitHeaders, rateLimitKey } from "./policy/rate-limit.js";
import { RetryBudget, withRetries } from "./policy/retry.js";
import { effectiveTimeout } from "./policy/timeout.js";
import type { RouteDecision, TrafficPolicy } from "./traffic/policy.js";
import { injectTraceparent } from "../mesh/telemetry/trace-context.js";

/** Request headers passed upstream as they are; everything else stays at the edge. */
const propagated = ["x-request-id", "traceparent", "tracestate", "baggage", "idempotency-key", "accept-language"];

export interface EdgeRequest {
  readonly headers: Headers;
  readonly ip: string;
  /** The deadline the client asked for, in ms from now. */
  readonly clientTimeoutMs: number | undefined;
}

export interface Admission {
  readonly method: GatewayMethod;
  readonly policy: MethodPolicySpec;
  readonly caller: Caller | undefined;
  readonly timeoutMs: number | undefined;
  readonly deadline: number | undefined;
  /** Headers for the upstream call, lower-case names. */
  readonly upstreamHeaders: Readonly<Record<string, string>>;
  /** Headers for the client response (rate-limit state, request id). */
  readonly responseHeaders: Record<string, string>;
  readonly breaker: CircuitBreakerPolicy;
  readonly breakerName: string;
  readonly breakerRetryAfterSec: number;
  readonly budget: RetryBudget;
  /** Stable or canary target, and whether the call is mirrored (gateway/traffic); set when a traffic policy is. */
  readonly route?: RouteDecision;
}

export interface PipelineEvents {
  onRateLimited?(m: GatewayMethod, shadow: boolean): void;
  onRetry?(m: GatewayMethod, attempt: number): void;
}

export class Pipeline {
  readonly limiter: RateLimiter;
  private readonly budgets = new Map<string, RetryBudget>();
  private readonly declaredBreakers: Map<string, GatewayService>;
  /** Canary routing and shadow traffic (gateway/traffic), consulted for every call; set by the server. */
  traffic: TrafficPolicy | undefined;

  constructor(
    private config: GatewayConfig,
    services: readonly GatewayService[],
    private readonly auth: Authenticator | undefined,
    readonly breakers: Breakers,
    private readonly events: PipelineEvents = {},
  ) {
    this.limiter = new RateLimiter({
      maxKeys: config.rateLimit.maxKeys,
      replicas: config.rateLimit.replicas,
      shadow: config.rateLimit.shadow,
    });
    this.declaredBreakers = new Map(services.map((s) => [s.upstream, s]));
  }

  get currentConfig(): GatewayConfig {
    return this.config;
  }

  setConfig(c: GatewayConfig): void {
    this.config = c;
    this.limiter.replicas = c.rateLimit.replicas;
    this.limiter.shadow = c.rateLimit.shadow;
  }

  /**
   * Admits a call or throws the EdgeError to answer with. Synchronous unless
   * a token has to be verified: the fast path admits most calls without a
   * promise (callers `await` either).
   */
  admit(m: GatewayMethod, req: EdgeRequest, streaming: boolean): Admission | Promise<Admission> {
    const config = this.config; // one config for the whole call
    const policy = effectivePolicy(m, config);
    const authorization = req.headers.get("authorization");
    if (authorization && this.auth) {
      return this.auth.authenticate(authorization).then((caller) => this.admitAs(m, req, streaming, config, policy, caller));
    }
    if (authorization && !this.auth && policy.auth !== "none") {
      throw new EdgeError("authentication is not configured on this gateway", Code.Unauthenticated, 401);
    }
    return this.admitAs(m, req, streaming, config, policy, undefined);
  }

  private admitAs(
    m: GatewayMethod,
    req: EdgeRequest,
    streaming: boolean,
    config: GatewayConfig,
    policy: MethodPolicySpec,
    caller: Caller | undefined,
  ): Admission {
    authorize(policy, caller);
    const requestId = req.headers.get("x-request-id") || randomUUID();
    const responseHeaders: Record<string, string> = { "x-request-id": requestId };

    if (policy.rateLimit) {
      const key = rateLimitKey(policy.rateLimit, {
        ip: req.ip,
        userId: caller?.userId,
        apiKey: req.headers.get("x-api-key"),
      });
      const d = this.limiter.take(`${m.grpcPath}|${key}`, policy.rateLimit);
      const h = rateLimitHeaders(d);
      Object.assign(responseHeaders, h);
      if (d.shadowRejected) this.events.onRateLimited?.(m, true);
      if (!d.allowed) {
        this.events.onRateLimited?.(m, false);
        const e = new EdgeError(`rate limit exceeded for ${m.grpcPath.slice(1)}`, Code.ResourceExhausted, 429, h);
        for (const [k, v] of Object.entries(h)) e.metadata.set(k, v);
        throw e;
      }
    }

    const route = this.traffic?.route({
      upstream: m.upstream,
      method: m.grpcPath,
      idempotent: policy.idempotent,
      streaming,
      headers: req.headers,
      ip: req.ip,
      userId: caller?.userId,
    });
    const { name: upstreamBreaker, spec } = effectiveBreaker(m, this.declaredBreakers.get(m.upstream)!.breaker, config);
    // A canary has a breaker of its own: its failures must not open the stable version's, nor the reverse.
    const breakerName = route?.variant === "canary" ? `${upstreamBreaker}@canary` : upstreamBreaker;
    const breaker = this.breakers.get(breakerName, spec);

    const timeoutMs = effectiveTimeout(policy.timeoutMs, req.clientTimeoutMs, streaming ? undefined : config.defaultTimeoutMs);
    // A plain record (lower-case names): cheaper to build and to copy into
    // HTTP/2 headers than a fetch Headers object, and a valid HeadersInit.
    const upstreamHeaders: Record<string, string> = {};
    for (const k of propagated) {
      const v = req.headers.get(k);
      if (v) upstreamHeaders[k] = v;
    }
    upstreamHeaders["x-request-id"] = requestId;
    // The upstream call continues the edge's trace (the HTTP server span when telemetry is on).
    injectTraceparent(upstreamHeaders);
    const xff = req.headers.get("x-forwarded-for");
    // Trusted, the chain goes on as received (its last entry is req.ip); otherwise only the peer.
    upstreamHeaders["x-forwarded-for"] = xff && config.trustForwardedFor ? xff : req.ip;
    // Identity only from a verified token: never what the client sent.
    if (caller) {
      upstreamHeaders["x-mesh-user-id"] = caller.userId;
      upstreamHeaders["x-mesh-user-role"] = caller.role;
    }
    let budget = this.budgets.get(m.upstream);
    if (!budget) this.budgets.set(m.upstream, (budget = new RetryBudget(0.2)));
    return {
      method: m,
      policy,
      caller,
      timeoutMs,
      deadline: timeoutMs === undefined ? undefined : Date.now() + timeoutMs,
      upstreamHeaders,
      responseHeaders,
      breaker,
      breakerName,
      breakerRetryAfterSec: Math.max(1, Math.ceil(spec.openForMs / 1000)),
      budget,
      route,
    };
  }

  /** A unary call upstream: breaker, retries (idempotent methods only), deadline. */
  async unary<I extends DescMessage, O extends DescMessage>(
    a: Admission,
    transport: Transport,
    input: MessageShape<I>,
    signal: AbortSignal,
  ): Promise<MessageShape<O>> {
    const method = a.method.method as DescMethodUnary<I, O>;
    if (a.route && this.traffic) transport = this.traffic.transport(a.route, transport);
    try {
      return await throughBreaker(a.breaker, a.breakerName, a.breakerRetryAfterSec, () =>
        withRetries(
          async () => {
            const remaining = a.deadline === undefined ? undefined : Math.max(1, a.deadline - Date.now());
            const res = await transport.unary(method, signal, remaining, a.upstreamHeaders, input);
            return res.message;
          },
          {
            idempotent: a.policy.idempotent,
            budget: a.budget,
            deadline: a.deadline,
            signal,
            onRetry: (n) => this.events.onRetry?.(a.method, n),
          },
        ),
      );
    } catch (e) {
      throw sanitize(e);
    }
  }

  /**
   * A server-streaming call upstream. The breaker sees the opening of the
   * stream (an upstream that cannot start streams is failing); errors later
   * in the stream reach the client but not the breaker.
   */
  async stream<I extends DescMessage, O extends DescMessage>(
    a: Admission,
    transport: Transport,
    input: MessageShape<I>,
    signal: AbortSignal,
  ): Promise<AsyncIterable<MessageShape<O>>> {
    const method = a.method.method as DescMethodServerStreaming<I, O>;
    if (a.route && this.traffic) transport = this.traffic.transport(a.route, transport);
    let res;
    try {
      res = await throughBreaker(a.breaker, a.breakerName, a.breakerRetryAfterSec, () =>
        transport.stream(
          method,
          signal,
          a.deadline === undefined ? undefined : Math.max(1, a.deadline - Date.now()),
          a.upstreamHeaders,
          (async function* () {
            yield input;
          })(),
        ),
      );
    } catch (e) {
      throw sanitize(e);
    }
    const messages = res.message;
    return {
      async *[Symbol.asyncIterator]() {
        try {
          for await (const m of messages) yield m;
        } catch (e) {
          throw sanitize(e);
        }
      },
    };
  }
}

/**
 * An upstream error as the edge may pass it on: code, message and details
 * only. Upstream metadata (content-type, grpc-status, ...) must not leak into
 * the client's response (connect-es issue 1582), so it is dropped here.
 */
export function sanitize(e: unknown): ConnectError {
  if (e instanceof EdgeError) return e;
  if (e instanceof ConnectError) {
    const keep = new Headers();
    const retryAfter = e.metadata.get("retry-after");
    if (retryAfter) keep.set("retry-after", retryAfter);
    const out = new ConnectError(e.rawMessage, e.code, keep, undefined, e.cause);
    out.details = e.details;
    return out;
  }
  if (e instanceof Error && e.name === "AbortError") return new ConnectError("request canceled", Code.Canceled);
  return new ConnectError("upstream failed", Code.Unavailable, undefined, undefined, e);
}
