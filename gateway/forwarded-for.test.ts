// trustForwardedFor: the client is the last X-Forwarded-For entry (the one the proxy in front
// appended), on every protocol, the gRPC fast path included. Rate limits are keyed by it.
import test from "ava";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { EchoService } from "../gen/protomesh/testing/v1/echo_pb.js";
import { parseConfig } from "./config.js";
import { forwardedClient } from "./server.js";
import { startEcho, startEchoGateway } from "./testing/harness.js";

test("forwardedClient takes the last entry, across repeated headers", (t) => {
  t.is(forwardedClient("203.0.113.7"), "203.0.113.7");
  t.is(forwardedClient("6.6.6.6, 203.0.113.7"), "203.0.113.7");
  t.is(forwardedClient(["6.6.6.6", "198.51.100.1, 203.0.113.8 "]), "203.0.113.8");
  t.is(forwardedClient(" , "), undefined);
  t.is(forwardedClient(undefined), undefined);
});

test("behind a trusted proxy, rate limits follow the appended address: not the peer (gRPC fast path), not what the client wrote first (REST)", async (t) => {
  const up = await startEcho();
  // Two calls a minute per client: no refill while the test runs.
  const gw = await startEchoGateway(up.port, {
    config: parseConfig({
      trustForwardedFor: true,
      methods: { "protomesh.testing.v1.EchoService/Limited": { rateLimit: { requests: 2, periodMs: 60_000, burst: 2 } } },
    }),
  });
  t.teardown(async () => {
    await gw.close();
    await up.close(0);
  });

  // REST: a client that writes its own first entry stays in the bucket of the address the proxy appended.
  const rest = async (xff: string) => (await fetch(`${gw.url}/v1/limited`, { headers: { "x-forwarded-for": xff } })).status;
  t.deepEqual([await rest("1.1.1.1, 10.0.0.1"), await rest("1.1.1.1, 10.0.0.1"), await rest("1.1.1.1, 10.0.0.1")], [200, 200, 429]);
  t.is(await rest("2.2.2.2, 10.0.0.1"), 429, "a new first entry is not a new bucket");
  t.is(await rest("10.0.0.2"), 200, "another client behind the proxy has its own");

  // gRPC on the fast path: every call comes from the same peer (this process), one client per address.
  const client = createClient(EchoService, createGrpcTransport({ baseUrl: gw.url }));
  const grpc = (xff: string) =>
    client.limited({}, { headers: { "x-forwarded-for": xff } }).then(
      () => "ok",
      (e) => Code[ConnectError.from(e).code],
    );
  t.deepEqual([await grpc("10.0.1.1"), await grpc("10.0.1.1"), await grpc("10.0.1.1")], ["ok", "ok", "ResourceExhausted"]);
  t.is(await grpc("10.0.1.2"), "ok", "not the peer's bucket");
});
