// Optional: a real Prometheus (Debian's `prometheus` package) scrapes this process's /metrics.
// Skipped when the binary is not installed (apt-get install prometheus).
import test from "ava";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { observeRpc, startMetricsServer } from "./metrics.js";
import { freePort } from "../net.js";

const hasPrometheus = !spawnSync("prometheus", ["--version"]).error;
const maybe = hasPrometheus ? test : test.skip;


maybe("Prometheus scrapes /metrics and can query the RPC counters", async (t) => {
  const metrics = await startMetricsServer({ port: 0, host: "127.0.0.1" });
  t.teardown(() => metrics.close());
  observeRpc("server", "test.prom.v1.PromService", "Ping", 0, 0.002);
  observeRpc("server", "test.prom.v1.PromService", "Ping", 0, 0.003);
  observeRpc("server", "test.prom.v1.PromService", "Ping", 5, 0.001);

  const dir = mkdtempSync(join(tmpdir(), "prom-"));
  const webPort = await freePort();
  writeFileSync(
    join(dir, "prometheus.yml"),
    `global: { scrape_interval: 1s }\nscrape_configs:\n  - job_name: mesh\n    static_configs: [{ targets: ["127.0.0.1:${metrics.port}"] }]\n`,
  );
  const prom = spawn(
    "prometheus",
    [`--config.file=${join(dir, "prometheus.yml")}`, `--storage.tsdb.path=${join(dir, "data")}`, `--web.listen-address=127.0.0.1:${webPort}`],
    { stdio: "ignore" },
  );
  t.teardown(() => {
    prom.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  });

  const query = async (q: string) => {
    const res = await fetch(`http://127.0.0.1:${webPort}/api/v1/query?query=${encodeURIComponent(q)}`);
    const body = (await res.json()) as { data: { result: { metric: Record<string, string>; value: [number, string] }[] } };
    return body.data.result;
  };
  const deadline = Date.now() + 40_000;
  let ok: { metric: Record<string, string>; value: [number, string] }[] = [];
  while (Date.now() < deadline) {
    ok = await query('grpc_server_handled_total{grpc_service="test.prom.v1.PromService",grpc_method="Ping",grpc_code="OK"}').catch(() => []);
    if (ok.length > 0) break;
    await new Promise((r) => setTimeout(r, 500));
  }
  t.is(ok.length, 1, "the series is in Prometheus");
  t.is(ok[0]!.value[1], "2");
  const up = await query('up{job="mesh"}');
  t.is(up[0]?.value[1], "1", "the scrape target is up (the exposition parsed)");
  const notFound = await query('grpc_server_handled_total{grpc_method="Ping",grpc_code="NOT_FOUND"}');
  t.is(notFound[0]?.value[1], "1");
});
