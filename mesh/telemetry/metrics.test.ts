import test from "ava";
import {
  countDeadLetter,
  countRateLimitRejection,
  countRedelivery,
  observeHttpRequest,
  observeOutboxPublishLag,
  registerDbPool,
  registerOutboxBacklog,
  startMetricsServer,
  watchBreaker,
  consumerMetricsHooks,
  deadLetterCategory,
  metricsRegistry,
  observeRpc,
  rpcSeries,
} from "./metrics.js";

async function scrape(url: string): Promise<string> {
  const res = await fetch(url);
  if (res.status !== 200) throw new Error(`scrape answered ${res.status}`);
  return res.text();
}

/** Value of the first sample of `name` whose labels include all of `labels`. */
function sample(text: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of text.split("\n")) {
    if (!line.startsWith(name + "{")) continue;
    const body = line.slice(name.length + 1, line.lastIndexOf("}"));
    if (Object.entries(labels).every(([k, v]) => body.includes(`${k}="${v}"`))) return Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return undefined;
}

test.serial("the helpers move their metrics and /metrics serves them with process metrics", async (t) => {
  const server = await startMetricsServer({ port: 0, host: "127.0.0.1" });
  t.teardown(() => server.close());

  let backlog = 7;
  registerOutboxBacklog("order", () => backlog);
  registerDbPool("order", async () => ({ inUse: 2, idle: 3, max: 10 }));
  countRateLimitRejection("/v1/orders", "client");
  countRateLimitRejection("/v1/orders", "client");
  countRedelivery("notification-order-placed", "shop.order.v1.OrderPlaced");
  countDeadLetter("notification-order-placed", "shop.order.v1.OrderPlaced", "max_deliveries");
  observeOutboxPublishLag("order", 0.02);
  observeHttpRequest("POST", "/v1/orders", 201, 0.05);

  // A fake cockatiel policy: same shape (state + onStateChange event).
  const listeners: ((s: number) => void)[] = [];
  const policy = { state: 0, onStateChange: (l: (s: number) => void) => (listeners.push(l), { dispose() {} }) };
  watchBreaker("order", policy);
  listeners.forEach((l) => l(1)); // open
  listeners.forEach((l) => l(2)); // half-open

  let text = await scrape(server.url);
  t.is(sample(text, "mesh_rate_limit_rejections_total", { route: "/v1/orders", scope: "client" }), 2);
  t.is(sample(text, "mesh_consumer_redeliveries_total", { consumer: "notification-order-placed" }), 1);
  t.is(sample(text, "mesh_dead_letters_total", { reason: "max_deliveries" }), 1);
  t.is(sample(text, "mesh_outbox_backlog", { context: "order" }), 7);
  t.is(sample(text, "mesh_outbox_publish_lag_seconds_count", { context: "order" }), 1);
  t.is(sample(text, "mesh_db_pool_connections", { context: "order", state: "in_use" }), 2);
  t.is(sample(text, "mesh_db_pool_connections", { context: "order", state: "max" }), 10);
  t.is(sample(text, "http_server_requests_total", { method: "POST", route: "/v1/orders", status: "201" }), 1);
  t.is(sample(text, "mesh_breaker_state", { upstream: "order", state: "half_open" }), 1);
  t.is(sample(text, "mesh_breaker_state", { upstream: "order", state: "open" }), 0);
  t.is(sample(text, "mesh_breaker_transitions_total", { upstream: "order", to: "open" }), 1);
  t.regex(text, /^nodejs_eventloop_lag_seconds/m);
  t.regex(text, /^nodejs_heap_size_used_bytes/m);

  backlog = 0; // read at scrape time
  text = await scrape(server.url);
  t.is(sample(text, "mesh_outbox_backlog", { context: "order" }), 0);

  const notFound = await fetch(server.url.replace("/metrics", "/other"));
  t.is(notFound.status, 404);
});

test.serial("consumer hooks count redeliveries once per extra delivery and dead letters by category", async (t) => {
  const server = await startMetricsServer({ port: 0, host: "127.0.0.1" });
  const hooks = consumerMetricsHooks("user-award-points");
  const subject = "shop.order.v1.OrderConfirmed";
  hooks.onHandled({ subject, deliveryCount: 1 });
  hooks.onRetry({ subject, deliveryCount: 2 });
  hooks.onDuplicate({ subject, deliveryCount: 3 });
  hooks.onDeadLetter({ subject, deliveryCount: 5 }, "5 deliveries: boom");
  const text = await scrape(server.url);
  t.is(sample(text, "mesh_consumer_redeliveries_total", { consumer: "user-award-points", subject }), 3);
  t.is(sample(text, "mesh_dead_letters_total", { consumer: "user-award-points", reason: "max_deliveries" }), 1);
  t.is(deadLetterCategory("cannot decode shop.x: bad wire"), "decode_error");
  t.is(deadLetterCategory("permanent: no such user"), "permanent");
});

test.serial("RPC series: counter, cumulative buckets, sum and count per code; a reset zeroes what callers keep", async (t) => {
  const server = await startMetricsServer({ port: 0, host: "127.0.0.1" });
  const kept = rpcSeries("server", "test.series.v1.S", "M", 0);
  observeRpc("server", "test.series.v1.S", "M", 0, 0.002);
  kept.record(0.02);
  observeRpc("server", "test.series.v1.S", "M", "NOT_FOUND", 30);
  const labels = { grpc_service: "test.series.v1.S", grpc_method: "M", grpc_code: "OK" };
  let text = await scrape(server.url);
  t.is(sample(text, "grpc_server_handled_total", labels), 2);
  t.is(sample(text, "grpc_server_handling_seconds_count", labels), 2);
  t.is(sample(text, "grpc_server_handling_seconds_sum", labels), 0.022);
  t.is(sample(text, "grpc_server_handling_seconds_bucket", { ...labels, le: "0.001" }), 0);
  t.is(sample(text, "grpc_server_handling_seconds_bucket", { ...labels, le: "0.0025" }), 1);
  t.is(sample(text, "grpc_server_handling_seconds_bucket", { ...labels, le: "0.025" }), 2);
  t.is(sample(text, "grpc_server_handling_seconds_bucket", { ...labels, le: "+Inf" }), 2);
  t.is(sample(text, "grpc_server_handling_seconds_bucket", { grpc_method: "M", grpc_code: "NOT_FOUND", le: "10" }), 0);
  t.is(sample(text, "grpc_server_handling_seconds_bucket", { grpc_method: "M", grpc_code: "NOT_FOUND", le: "+Inf" }), 1);
  t.regex(text, /^# TYPE grpc_server_handling_seconds histogram$/m);

  metricsRegistry.resetMetrics();
  kept.record(0.003);
  text = await scrape(server.url);
  t.is(sample(text, "grpc_server_handled_total", labels), 1, "the kept series still reaches /metrics");
});
