// Prometheus metrics for a mesh process: one registry, a `/metrics` HTTP server on its own
// port, and small named helpers the other mesh modules call.
//
// Naming convention: the grpc-ecosystem (go-grpc-prometheus) names, because dashboards and
// alerts for them already exist everywhere:
//   grpc_server_handled_total / grpc_server_handling_seconds   (this process served the RPC)
//   grpc_client_handled_total / grpc_client_handling_seconds   (this process called the RPC)
// labelled grpc_service (full proto name, e.g. shop.order.v1.OrderService), grpc_method
// (PlaceOrder) and grpc_code (canonical upper-snake status name: OK, NOT_FOUND, ...).
// The histograms carry grpc_code too so latency of failures is visible. Everything the mesh
// adds on top is prefixed `mesh_`; units are in the name (_seconds, _total), per Prometheus.
// The RPC figures are recorded by mesh/server and mesh/client as each call ends
// (rpc-telemetry.ts), next to the span of the call.
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import { serviceIdentity } from "./service-identity.js";

export const metricsRegistry = new Registry();

const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export const GRPC_CODE_NAMES = [
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
] as const;

export function grpcCodeName(code: number | string | undefined): string {
  if (typeof code === "string") return code;
  return (code !== undefined && GRPC_CODE_NAMES[code]) || "UNKNOWN";
}

export type RpcSide = "server" | "client";

/**
 * One label set of a latency histogram, counted in plain numbers. RPCs and database
 * statements are recorded on the hot path (an RPC twice per call in a process that is both
 * ends, a statement several times per request); prom-client's own children validate, copy
 * and hash their labels on every inc/observe, which cost ~10 µs of CPU per call in garbage
 * and work (bench/telemetry-overhead.ts, RPC telemetry toggled in one process). A caller
 * keeps the series it records into; the values are read when /metrics is scraped.
 */
export class LatencySeries<L extends string = string> {
  count = 0;
  sum = 0;
  /** Observations per bucket of `bounds` (not cumulative); the last one is +Inf. */
  readonly buckets: Float64Array;
  constructor(
    readonly labels: Readonly<Record<L, string>>,
    readonly bounds: readonly number[] = LATENCY_BUCKETS,
  ) {
    this.buckets = new Float64Array(bounds.length + 1);
  }

  reset(): void {
    this.count = 0;
    this.sum = 0;
    this.buckets.fill(0);
  }

  record(seconds: number): void {
    this.count++;
    this.sum += seconds;
    const bounds = this.bounds;
    let i = 0;
    while (i < bounds.length && seconds > bounds[i]!) i++;
    this.buckets[i]!++;
  }
}

const rpcLabels = ["grpc_service", "grpc_method", "grpc_code"] as const;
type RpcLabel = (typeof rpcLabels)[number];
/** One (service, method, code) of the RPC metrics of one side. */
export type RpcSeries = LatencySeries<RpcLabel>;
const rpcSeriesBySide: Record<RpcSide, Map<string, RpcSeries>> = { server: new Map(), client: new Map() };

// prom-client metrics whose values come from the series (get() is what the registry reads).
class RpcHandledCounter extends Counter<RpcLabel> {
  constructor(
    name: string,
    help: string,
    private readonly side: RpcSide,
  ) {
    super({ name, help, labelNames: rpcLabels, registers: [metricsRegistry] });
  }
  override async get() {
    const metric = await super.get();
    const values = [...rpcSeriesBySide[this.side].values()].map((s) => ({ value: s.count, labels: { ...s.labels } }));
    return { ...metric, values };
  }
  override reset(): void {
    super.reset();
    // Zeroed, not dropped: rpc-telemetry.ts keeps the series it records into. (prom-client's
    // constructor calls reset() before this.side is set.)
    if (this.side) for (const s of rpcSeriesBySide[this.side].values()) s.reset();
  }
}

/** A prom-client histogram whose values are the LatencySeries `series()` yields. */
class SeriesHistogram<L extends string> extends Histogram<L> {
  constructor(
    private readonly metricName: string,
    private readonly helpText: string,
    labelNames: readonly L[],
    private readonly series: () => Iterable<LatencySeries<L>>,
    private readonly bounds: readonly number[] = LATENCY_BUCKETS,
  ) {
    super({ name: metricName, help: helpText, labelNames, buckets: [...bounds], registers: [metricsRegistry] });
    // prom-client's registry formats a histogram through getForPromString (absent from its
    // typings) rather than get(): give it the same values.
    (this as unknown as { getForPromString: () => Promise<unknown> }).getForPromString = () => this.get();
  }
  override async get() {
    const values: { value: number; labels: Record<string, string | number>; metricName: string }[] = [];
    for (const s of this.series()) {
      let cumulative = 0;
      for (let i = 0; i <= this.bounds.length; i++) {
        cumulative += s.buckets[i]!;
        const le = i < this.bounds.length ? this.bounds[i]! : "+Inf";
        values.push({ value: cumulative, labels: { ...s.labels, le }, metricName: `${this.metricName}_bucket` });
      }
      values.push({ value: s.sum, labels: { ...s.labels }, metricName: `${this.metricName}_sum` });
      values.push({ value: s.count, labels: { ...s.labels }, metricName: `${this.metricName}_count` });
    }
    const metric = { name: this.metricName, help: this.helpText, type: "histogram", values, aggregator: "sum" };
    return metric as unknown as Awaited<ReturnType<Histogram<L>["get"]>>;
  }
  override reset(): void {
    super.reset();
    // Zeroed, not dropped (callers keep their series); the constructor calls reset() first.
    if (this.series) for (const s of this.series()) s.reset();
  }
}

new RpcHandledCounter(
  "grpc_server_handled_total",
  "RPCs completed by this process as a server, by service, method and status code.",
  "server",
);
new SeriesHistogram("grpc_server_handling_seconds", "Time to handle an RPC as a server, from request to status.", rpcLabels, () =>
  rpcSeriesBySide.server.values(),
);
new RpcHandledCounter(
  "grpc_client_handled_total",
  "RPCs completed by this process as a client, by service, method and status code.",
  "client",
);
new SeriesHistogram("grpc_client_handling_seconds", "Time from starting an RPC as a client until its status arrived.", rpcLabels, () =>
  rpcSeriesBySide.client.values(),
);

/** The series of one (side, service, method, code); callers may keep it. */
export function rpcSeries(side: RpcSide, service: string, method: string, code: number | string): RpcSeries {
  const codeName = grpcCodeName(code);
  const key = `${service} ${method} ${codeName}`;
  const bySide = rpcSeriesBySide[side];
  let series = bySide.get(key);
  if (!series) {
    series = new LatencySeries<RpcLabel>({ grpc_service: service, grpc_method: method, grpc_code: codeName });
    bySide.set(key, series);
  }
  return series;
}

/**
 * Record one finished RPC. mesh/server and mesh/client record theirs through
 * rpc-telemetry.ts (which keeps the series per method); this is for other callers.
 */
export function observeRpc(side: RpcSide, service: string, method: string, code: number | string, seconds: number): void {
  rpcSeries(side, service, method, code).record(seconds);
}

// --- HTTP at the gateway --------------------------------------------------------------

const httpLabels = ["method", "route", "status"] as const;
const httpRequests = new Counter({
  name: "http_server_requests_total",
  help: "HTTP requests answered, by method, route template and status.",
  labelNames: httpLabels,
  registers: [metricsRegistry],
});
const httpDuration = new Histogram({
  name: "http_server_request_duration_seconds",
  help: "Time to answer an HTTP request.",
  labelNames: httpLabels,
  buckets: LATENCY_BUCKETS,
  registers: [metricsRegistry],
});

/** `route` is the template (/v1/orders/{id}), never the raw path, to keep cardinality bounded. */
export function observeHttpRequest(method: string, route: string, status: number, seconds: number): void {
  const labels = { method, route, status: String(status) };
  httpRequests.inc(labels);
  httpDuration.observe(labels, seconds);
}

// --- Rate limits and breakers ---------------------------------------------------------

const rateLimitRejections = new Counter({
  name: "mesh_rate_limit_rejections_total",
  help: "Requests refused by a rate limit, by route and limit scope (client, route, global).",
  labelNames: ["route", "scope"],
  registers: [metricsRegistry],
});

export function countRateLimitRejection(route: string, scope = "client"): void {
  rateLimitRejections.inc({ route, scope });
}

export type BreakerState = "closed" | "open" | "half_open" | "isolated";
const BREAKER_STATES: BreakerState[] = ["closed", "open", "half_open", "isolated"];

const breakerState = new Gauge({
  name: "mesh_breaker_state",
  help: "Circuit breaker state per upstream: 1 for the current state, 0 for the others.",
  labelNames: ["upstream", "state"],
  registers: [metricsRegistry],
});
const breakerTransitions = new Counter({
  name: "mesh_breaker_transitions_total",
  help: "Circuit breaker state changes per upstream, by the state entered.",
  labelNames: ["upstream", "to"],
  registers: [metricsRegistry],
});

/** Record the breaker of `upstream` entering `state` (counts a transition unless `initial`). */
export function recordBreakerState(upstream: string, state: BreakerState, initial = false): void {
  for (const s of BREAKER_STATES) breakerState.set({ upstream, state: s }, s === state ? 1 : 0);
  if (!initial) breakerTransitions.inc({ upstream, to: state });
}

/**
 * Follow a cockatiel CircuitBreakerPolicy: `watchBreaker("order", policy)`.
 * Returns a function that stops following.
 */
export function watchBreaker(
  upstream: string,
  policy: { state: number; onStateChange: (listener: (state: number) => void) => { dispose(): void } },
): () => void {
  // cockatiel's CircuitState: Closed 0, Open 1, HalfOpen 2, Isolated 3.
  const names: BreakerState[] = ["closed", "open", "half_open", "isolated"];
  recordBreakerState(upstream, names[policy.state] ?? "closed", true);
  const sub = policy.onStateChange((s) => recordBreakerState(upstream, names[s] ?? "closed"));
  return () => sub.dispose();
}

// --- Outbox, consumers, dead letters ----------------------------------------------------

type Reader<T> = () => T | Promise<T>;
const outboxBacklogReaders = new Map<string, Reader<number>>();
const outboxBacklogValues = new Map<string, number>();

new Gauge({
  name: "mesh_outbox_backlog",
  help: "Outbox rows written but not yet published, per context.",
  labelNames: ["context"],
  registers: [metricsRegistry],
  async collect() {
    for (const [ctx, read] of outboxBacklogReaders) {
      try {
        outboxBacklogValues.set(ctx, await read());
      } catch {
        // A scrape must not fail because the database is away; keep the last value.
      }
    }
    for (const [ctx, n] of outboxBacklogValues) this.set({ context: ctx }, n);
  },
});

/** Read the backlog at scrape time: `registerOutboxBacklog("order", () => countUnpublished())`. */
export function registerOutboxBacklog(context: string, read: Reader<number>): void {
  outboxBacklogReaders.set(context, read);
}

/** Or push it when the relay already knows it. */
export function setOutboxBacklog(context: string, rows: number): void {
  outboxBacklogValues.set(context, rows);
}

// Observed once per published event: plain-number series, as the RPC and statement metrics.
const PUBLISH_LAG_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const publishLagSeries = new Map<string, LatencySeries<"context">>();
new SeriesHistogram(
  "mesh_outbox_publish_lag_seconds",
  "Time from an outbox row's commit to its publication on NATS.",
  ["context"],
  () => publishLagSeries.values(),
  PUBLISH_LAG_BUCKETS,
);

export function observeOutboxPublishLag(context: string, seconds: number): void {
  let series = publishLagSeries.get(context);
  if (!series) {
    series = new LatencySeries({ context }, PUBLISH_LAG_BUCKETS);
    publishLagSeries.set(context, series);
  }
  series.record(seconds);
}

const consumerRedeliveries = new Counter({
  name: "mesh_consumer_redeliveries_total",
  help: "Messages delivered again to a durable consumer (delivery count > 1).",
  labelNames: ["consumer", "subject"],
  registers: [metricsRegistry],
});

export function countRedelivery(consumer: string, subject: string): void {
  consumerRedeliveries.inc({ consumer, subject });
}

const deadLetters = new Counter({
  name: "mesh_dead_letters_total",
  help: "Messages moved to the dead-letter stream, by consumer, subject and reason category.",
  labelNames: ["consumer", "subject", "reason"],
  registers: [metricsRegistry],
});

/** `reason` is a short category (max_deliveries, decode_error, handler_error), not a message. */
export function countDeadLetter(consumer: string, subject: string, reason: string): void {
  deadLetters.inc({ consumer, subject, reason });
}

// --- Database --------------------------------------------------------------------------

export interface PoolStats {
  inUse: number;
  idle: number;
  max: number;
}
const poolReaders = new Map<string, Reader<PoolStats>>();

new Gauge({
  name: "mesh_db_pool_connections",
  help: "Database connections per context: in_use, idle and the configured max.",
  labelNames: ["context", "state"],
  registers: [metricsRegistry],
  async collect() {
    for (const [ctx, read] of poolReaders) {
      try {
        const s = await read();
        this.set({ context: ctx, state: "in_use" }, s.inUse);
        this.set({ context: ctx, state: "idle" }, s.idle);
        this.set({ context: ctx, state: "max" }, s.max);
      } catch {
        // keep the last values
      }
    }
  },
});

export function registerDbPool(context: string, read: Reader<PoolStats>): void {
  poolReaders.set(context, read);
}

const dbLabels = ["context", "operation", "outcome"] as const;
/** One (context, operation, outcome) of mesh_db_query_duration_seconds. */
export type DbQuerySeries = LatencySeries<(typeof dbLabels)[number]>;
const dbSeries = new Map<string, DbQuerySeries>();
new SeriesHistogram("mesh_db_query_duration_seconds", "Database query time per context and SQL operation (select, insert, ...).", dbLabels, () =>
  dbSeries.values(),
);

/** The series a statement of `operation` in `context` records into; keep it (db-spans.ts does, per statement text). */
export function dbQuerySeries(context: string, operation: string, ok: boolean): DbQuerySeries {
  const outcome = ok ? "ok" : "error";
  const key = `${context}\0${operation}\0${outcome}`;
  let series = dbSeries.get(key);
  if (!series) {
    series = new LatencySeries({ context, operation, outcome });
    dbSeries.set(key, series);
  }
  return series;
}

export function observeDbQuery(context: string, operation: string, seconds: number, ok: boolean): void {
  dbQuerySeries(context, operation, ok).record(seconds);
}

// --- Process metrics and the HTTP endpoint ----------------------------------------------

let processMetricsOn = false;
/** How often the event-loop lag histogram samples (prom-client's eventLoopMonitoringPrecision). */
const EVENT_LOOP_SAMPLE_MS = 100;

/** Node's own metrics (event-loop lag, heap, RSS, GC, handles) and the `service` label. Idempotent. */
export function collectProcessMetrics(): void {
  if (processMetricsOn) return;
  processMetricsOn = true;
  metricsRegistry.setDefaultLabels({ service: serviceIdentity().name });
  // prom-client samples event-loop lag with a timer every 10 ms by default: 100 wake-ups a
  // second that cost an idle service about 5 ms of CPU per second (most of what it spends
  // idle; `npx tsx bench/idle.ts`, docs/performance.md round 6). Every 100 ms still
  // gives a scrape interval's lag percentiles from over a hundred samples.
  collectDefaultMetrics({ register: metricsRegistry, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
}

export interface MetricsServer {
  port: number;
  url: string;
  close(): Promise<void>;
}

let running: Promise<MetricsServer> | undefined;

/**
 * Serve `GET /metrics` on `port` (default METRICS_PORT, else an ephemeral port). The server
 * is unref'd: it never keeps a process alive. A second call returns the first server.
 */
export function startMetricsServer(options: { port?: number; host?: string } = {}): Promise<MetricsServer> {
  if (running) return running;
  collectProcessMetrics();
  const port = options.port ?? Number(process.env.METRICS_PORT ?? 0);
  const host = options.host ?? process.env.METRICS_HOST ?? "0.0.0.0";
  const server: Server = createServer((req, res) => {
    if (req.method !== "GET" || (req.url ?? "").split("?")[0] !== "/metrics") {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found: try GET /metrics\n");
      return;
    }
    metricsRegistry.metrics().then(
      (text) => res.writeHead(200, { "content-type": metricsRegistry.contentType }).end(text),
      (err) => res.writeHead(500, { "content-type": "text/plain" }).end(String(err)),
    );
  });
  running = new Promise<MetricsServer>((resolve, reject) => {
    server.once("error", (err) => {
      running = undefined;
      reject(err);
    });
    server.listen(port, host, () => {
      server.unref();
      const actual = (server.address() as AddressInfo).port;
      resolve({
        port: actual,
        url: `http://127.0.0.1:${actual}/metrics`,
        close: () =>
          new Promise<void>((done) => {
            running = undefined;
            server.close(() => done());
          }),
      });
    });
  });
  return running;
}

/** The running metrics server, if any (the registry advertises its port). */
export function metricsServer(): Promise<MetricsServer> | undefined {
  return running;
}

// --- Adapter for mesh/events consumer hooks -------------------------------------------

/** The part of mesh/events' EventMeta these hooks read. */
interface DeliveredEvent {
  subject: string;
  deliveryCount: number;
}

/** A dead-letter reason (free text) folded into a small, fixed set of label values. */
export function deadLetterCategory(reason: string): string {
  if (/^permanent/i.test(reason)) return "permanent";
  if (/deliver/i.test(reason)) return "max_deliveries";
  if (/decode/i.test(reason)) return "decode_error";
  if (/header/i.test(reason)) return "missing_header";
  if (/expects/i.test(reason)) return "wrong_type";
  return "other";
}

/**
 * Consumer hooks that feed mesh_consumer_redeliveries_total and mesh_dead_letters_total:
 * `startConsumer({ ..., hooks: consumerMetricsHooks("user-award-points") })`. Every delivery
 * ends in exactly one hook, so a delivery count above 1 is counted once per redelivery.
 */
export function consumerMetricsHooks(consumer: string) {
  const redelivered = (meta: DeliveredEvent) => {
    if (meta.deliveryCount > 1) countRedelivery(consumer, meta.subject);
  };
  return {
    onHandled: (meta: DeliveredEvent) => redelivered(meta),
    onDuplicate: (meta: DeliveredEvent) => redelivered(meta),
    onRetry: (meta: DeliveredEvent) => redelivered(meta),
    onDeadLetter: (meta: DeliveredEvent, reason: string) => {
      redelivered(meta);
      countDeadLetter(consumer, meta.subject, deadLetterCategory(reason));
    },
  };
}
