/**
 * gRPC health checking (grpc.health.v1: Check, List, Watch) that reflects real
 * readiness: a probe (for example a database ping and a migrations check) runs
 * periodically; while it fails, the server ("") and every service report
 * NOT_SERVING, and SERVING again once it passes.
 *
 * Served by mesh/server from the generated descriptor in gen/grpc/health/v1, as
 * an ordinary ServiceImpl. (The npm package grpc-health-check loads its .proto
 * with proto-loader at run time and would not show up in reflection; the
 * protocol is small enough to implement over the generated code.)
 *
 * API
 *   type ReadinessProbe = () => unknown | Promise<unknown>    throw or return false = not ready
 *   class HealthState
 *     constructor(services: string[])                   "" is always known
 *     get(service): ServingStatus | undefined
 *     set(service, status): void                        notifies watchers on change
 *     setAll(status): void                              "" and every service
 *     watch(service, listener): () => void              unsubscribe
 *     startProbe(probe, { intervalMs?, timeoutMs? }): Promise<void>  first result awaited
 *     checkNow(): Promise<boolean>                      run the probe once now
 *     stop(): void                                      stop probing, end all Watch streams
 *   createHealthImpl(state): ServiceImpl<typeof Health>
 *   ServingStatus (re-exported enum)
 *   LIVENESS_SERVICE                                  "protomesh.liveness"
 *
 * Liveness is not readiness: LIVENESS_SERVICE answers SERVING whenever the process can answer
 * at all, whatever the probe says. It is the name for an orchestrator's liveness check
 * (Kubernetes: `livenessProbe: grpc: { port, service: protomesh.liveness }`): checking "" there
 * restarts every replica while the database is down, and a restarted replica then cannot run
 * its migrations and crash-loops. Readiness ("" and the services) takes it out of rotation.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import {
  Health,
  HealthCheckResponse_ServingStatus as ServingStatus,
} from "../gen/grpc/health/v1/health_pb.js";

export { ServingStatus };

/** The health "service" that reports the process alive, never the readiness probe's outcome. */
export const LIVENESS_SERVICE = "protomesh.liveness";

/** Readiness check: ready unless it throws, rejects or returns false. */
export type ReadinessProbe = () => unknown | Promise<unknown>;

export interface ProbeOptions {
  /** Time between probes; 5 s by default. */
  intervalMs?: number;
  /** A probe slower than this counts as failed; 2 s by default. */
  timeoutMs?: number;
  /** Called when the outcome changes (for logs). */
  onChange?: (ready: boolean, error?: unknown) => void;
}

type Listener = (status: ServingStatus) => void;

/** The serving status of the server ("") and of each service. */
export class HealthState {
  private readonly statuses = new Map<string, ServingStatus>();
  private readonly listeners = new Map<string, Set<Listener>>();
  private readonly stopped = new AbortController();
  private probe?: ReadinessProbe;
  private probeOptions: ProbeOptions = {};
  private timer?: NodeJS.Timeout;
  private lastReady?: boolean;

  constructor(services: string[] = []) {
    for (const s of ["", ...services, LIVENESS_SERVICE]) this.statuses.set(s, ServingStatus.SERVING);
  }

  /** Aborted by stop(): ends Watch streams so a graceful shutdown is not held up by them. */
  get stopSignal(): AbortSignal {
    return this.stopped.signal;
  }

  get(service: string): ServingStatus | undefined {
    return this.statuses.get(service);
  }

  /** Every known service and its status. */
  entries(): [string, ServingStatus][] {
    return [...this.statuses.entries()];
  }

  set(service: string, status: ServingStatus): void {
    const before = this.statuses.get(service);
    this.statuses.set(service, status);
    if (before === status) return;
    for (const l of this.listeners.get(service) ?? []) l(status);
  }

  /** "" and every service: readiness. Liveness (LIVENESS_SERVICE) is left as it is. */
  setAll(status: ServingStatus): void {
    for (const s of [...this.statuses.keys()]) if (s !== LIVENESS_SERVICE) this.set(s, status);
  }

  watch(service: string, listener: Listener): () => void {
    let set = this.listeners.get(service);
    if (!set) this.listeners.set(service, (set = new Set()));
    set.add(listener);
    return () => set.delete(listener);
  }

  /**
   * Starts probing readiness. The first probe is awaited, so the server never
   * reports SERVING before it has seen its dependencies answer.
   */
  async startProbe(probe: ReadinessProbe, options: ProbeOptions = {}): Promise<void> {
    this.probe = probe;
    this.probeOptions = options;
    await this.checkNow();
    this.schedule();
  }

  /** Runs the probe now and applies the outcome; true when ready. */
  async checkNow(): Promise<boolean> {
    if (!this.probe || this.stopped.signal.aborted) return this.lastReady ?? true;
    const timeoutMs = this.probeOptions.timeoutMs ?? 2000;
    let ready: boolean;
    let error: unknown;
    let timer: NodeJS.Timeout | undefined;
    try {
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`readiness probe took longer than ${timeoutMs} ms`)), timeoutMs);
      });
      const result = await Promise.race([Promise.resolve().then(this.probe), timeout]);
      ready = result !== false;
    } catch (e) {
      ready = false;
      error = e;
    } finally {
      clearTimeout(timer);
    }
    if (this.stopped.signal.aborted) return ready;
    if (ready !== this.lastReady) {
      this.lastReady = ready;
      this.probeOptions.onChange?.(ready, error);
    }
    this.setAll(ready ? ServingStatus.SERVING : ServingStatus.NOT_SERVING);
    return ready;
  }

  private schedule(): void {
    if (this.stopped.signal.aborted) return;
    this.timer = setTimeout(() => {
      void this.checkNow().finally(() => this.schedule());
    }, this.probeOptions.intervalMs ?? 5000);
    // A probe timer alone must not keep the process alive.
    this.timer.unref();
  }

  /** Stops probing and ends every Watch stream. */
  stop(): void {
    clearTimeout(this.timer);
    this.stopped.abort(new ConnectError("server shutting down", Code.Unavailable));
  }
}

/** The grpc.health.v1.Health implementation over a HealthState. */
export function createHealthImpl(state: HealthState): ServiceImpl<typeof Health> {
  return {
    check(req) {
      const status = state.get(req.service);
      if (status === undefined) throw new ConnectError(`unknown service "${req.service}"`, Code.NotFound);
      return { status };
    },
    list() {
      return {
        statuses: Object.fromEntries(state.entries().map(([name, status]) => [name, { status }])),
      };
    },
    async *watch(req, ctx: HandlerContext) {
      // Queue changes so none is lost while the previous one is being written.
      const pending: ServingStatus[] = [state.get(req.service) ?? ServingStatus.SERVICE_UNKNOWN];
      let wake: (() => void) | undefined;
      const unsubscribe = state.watch(req.service, (s) => {
        pending.push(s);
        wake?.();
      });
      const onAbort = () => wake?.();
      ctx.signal.addEventListener("abort", onAbort);
      state.stopSignal.addEventListener("abort", onAbort);
      try {
        for (;;) {
          while (pending.length > 0) yield { status: pending.shift()! };
          if (ctx.signal.aborted || state.stopSignal.aborted) return;
          await new Promise<void>((resolve) => (wake = resolve));
          wake = undefined;
        }
      } finally {
        unsubscribe();
        ctx.signal.removeEventListener("abort", onAbort);
        state.stopSignal.removeEventListener("abort", onAbort);
      }
    },
  };
}
