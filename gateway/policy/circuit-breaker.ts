// Circuit breakers per upstream (and per method where config asks for one),
// on cockatiel: a rolling error rate over a window with a minimum volume,
// open for a while, then half-open with a number of probe calls. Only
// upstream failures count; a client's bad request never opens a breaker.
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BrokenCircuitError,
  CircuitBreakerPolicy,
  CircuitState,
  IsolatedCircuitError,
  SamplingBreaker,
  circuitBreaker,
  handleWhen,
} from "cockatiel";
import type { BreakerSpec } from "../descriptors.js";
import { EdgeError } from "../errors.js";

/** Codes that mean the upstream (not the client) failed. */
const upstreamFailureCodes = new Set<Code>([Code.Unavailable, Code.DeadlineExceeded, Code.Internal, Code.Unknown]);

export function isUpstreamFailure(e: unknown): boolean {
  if (e instanceof ConnectError) return upstreamFailureCodes.has(e.code);
  // Not a status at all: a connection error, a reset stream.
  return !(e instanceof Error && e.name === "AbortError");
}

export type BreakerStateName = "closed" | "open" | "half_open" | "isolated";
const stateNames: BreakerStateName[] = ["closed", "open", "half_open", "isolated"];

export interface BreakerEvents {
  onStateChange?(name: string, from: BreakerStateName, to: BreakerStateName): void;
  /** Lets telemetry follow a breaker (e.g. mesh/telemetry watchBreaker). */
  onCreate?(name: string, policy: CircuitBreakerPolicy): void;
}

/**
 * Marks a failure the breaker should count without changing what the caller
 * sees. One shared instance: it never reaches a caller, and building an Error
 * (its stack) per failed call is not free.
 */
class CountedFailure extends Error {}
const countedFailure = new CountedFailure("counted by the breaker");

export class Breakers {
  private readonly byName = new Map<string, { spec: string; specRef: BreakerSpec; policy: CircuitBreakerPolicy }>();
  constructor(private readonly events: BreakerEvents = {}) {}

  /** The breaker named `name` (an upstream, or "upstream/Method"), created or rebuilt when its spec changed. */
  get(name: string, spec: BreakerSpec): CircuitBreakerPolicy {
    const have = this.byName.get(name);
    if (have && have.specRef === spec) return have.policy; // the per-call path: same config object
    const key = JSON.stringify(spec);
    if (have && have.spec === key) {
      have.specRef = spec;
      return have.policy;
    }
    const policy = circuitBreaker(
      handleWhen((e) => e instanceof CountedFailure || isUpstreamFailure(e)),
      {
        halfOpenAfter: spec.openForMs,
        breaker: new SamplingBreaker({
          threshold: Math.min(0.99, Math.max(0.01, spec.errorPercent / 100)),
          duration: spec.windowMs,
          // cockatiel counts volume as a rate; this is `minRequests` per window.
          minimumRps: spec.minRequests / (spec.windowMs / 1000),
        }),
        halfOpenSampling: spec.halfOpenProbes > 1 ? { calls: spec.halfOpenProbes, threshold: 0.5 } : undefined,
      },
    );
    let prev: BreakerStateName = stateNames[policy.state];
    policy.onStateChange((s) => {
      const next = stateNames[s];
      this.events.onStateChange?.(name, prev, next);
      prev = next;
    });
    this.byName.set(name, { spec: key, specRef: spec, policy });
    this.events.onCreate?.(name, policy);
    return policy;
  }

  state(name: string): BreakerStateName | undefined {
    const b = this.byName.get(name);
    return b && stateNames[b.policy.state];
  }
}

/** The error a caller sees while a breaker is open. */
export function breakerOpenError(name: string, retryAfterSec: number): EdgeError {
  const e = new EdgeError(`upstream "${name}" unavailable: circuit breaker open`, Code.Unavailable, 503, {
    "retry-after": String(retryAfterSec),
  });
  e.metadata.set("retry-after", String(retryAfterSec));
  return e;
}

/**
 * Runs `fn` through the breaker. While open it fails fast with UNAVAILABLE
 * (503 + Retry-After). `outcome` lets a caller report a failure that arrived
 * as a value (a gRPC status in trailers) rather than as a thrown error.
 */
export function throughBreaker<T>(
  policy: CircuitBreakerPolicy,
  name: string,
  retryAfterSec: number,
  fn: () => Promise<T>,
  outcome?: (value: T) => boolean,
): Promise<T> {
  // Promise chains rather than async wrappers: this runs for every call, and
  // each async layer costs a promise and a microtask hop.
  let value: T | undefined;
  let have = false;
  const task = outcome
    ? () =>
        fn().then((v) => {
          if (outcome(v)) return v;
          value = v;
          have = true;
          throw countedFailure;
        })
    : fn;
  return policy.execute(task).catch((e: unknown) => {
    if (e === countedFailure && have) return value as T;
    if (e instanceof BrokenCircuitError || e instanceof IsolatedCircuitError) throw breakerOpenError(name, retryAfterSec);
    throw e;
  });
}

export { CircuitState };
