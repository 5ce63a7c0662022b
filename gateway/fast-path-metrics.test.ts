// The gRPC frame fast path is counted in the gateway's HTTP request metrics
// like every other protocol (its own file: the metrics registry is per process).
import test from "ava";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { EchoService } from "../gen/protomesh/testing/v1/echo_pb.js";
import { startEcho, startEchoGateway } from "./testing/harness.js";

const series = /^http_server_requests_total\{method="POST",route="\/protomesh\.testing\.v1\.EchoService\/Echo",status="200"\} (\d+)$/m;

test("a gRPC call on the fast path is counted in http_server_requests_total and its duration observed", async (t) => {
  const upstream = await startEcho();
  const gw = await startEchoGateway(upstream.port);
  try {
    const count = async () => Number(series.exec(await (await fetch(`${gw.url}/metrics`)).text())?.[1] ?? 0);
    const before = await count();
    const client = createClient(EchoService, createGrpcTransport({ baseUrl: gw.url }));
    await client.echo({ id: "m1" });
    await client.echo({ id: "m2" });
    // The count lands when the client's stream closes, just after the answer.
    let after = await count();
    for (let i = 0; i < 20 && after < before + 2; i++) {
      await new Promise((r) => setTimeout(r, 25));
      after = await count();
    }
    t.is(after, before + 2);
    const text = await (await fetch(`${gw.url}/metrics`)).text();
    t.regex(text, /http_server_request_duration_seconds_count\{method="POST",route="\/protomesh\.testing\.v1\.EchoService\/Echo",status="200"\} [1-9]/);
  } finally {
    await gw.close();
    await upstream.close(0);
  }
});
