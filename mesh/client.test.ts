// mesh/client's own unary runner (runUnary in client.ts, in place of Connect's
// runUnaryCall), over real TCP: interceptors wrap the call outermost-first, the signal they
// see fires once the call is over with one shared reason (no DOMException per call), and the
// caller's abort and the timeout end the call with CANCELED and DEADLINE_EXCEEDED, and a
// signal already aborted sends nothing.
import test from "ava";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { EchoService } from "../gen/protomesh/testing/v1/echo_pb.js";
import { closeMeshClients, createMeshClient } from "./client.js";
import { serve, startMeshServer, type MeshServer } from "./server.js";

let server: MeshServer;

test.before(async () => {
  server = await startMeshServer({
    name: "client-test",
    host: "127.0.0.1",
    port: 0,
    reflection: false,
    logger: { info() {}, warn() {}, error() {} },
    services: [
      serve(EchoService, {
        async echo(req, ctx) {
          if (req.id === "slow") {
            await new Promise<void>((resolve) => ctx.signal.addEventListener("abort", () => resolve(), { once: true }));
          }
          return { request: req };
        },
      }),
    ],
  });
});
test.after.always(async () => {
  closeMeshClients();
  await server?.close(100);
});

test("interceptors run outermost first and see a full request message", async (t) => {
  const order: string[] = [];
  const tag =
    (name: string): Interceptor =>
    (next) =>
    async (req) => {
      order.push(`${name}>`);
      if (!req.stream) t.is(req.message.$typeName, "protomesh.testing.v1.EchoRequest");
      const res = await next(req);
      order.push(`<${name}`);
      return res;
    };
  const client = createMeshClient(EchoService, server.address, { interceptors: [tag("a"), tag("b")] });
  const res = await client.echo({ id: "x" });
  t.is(res.request?.id, "x");
  t.deepEqual(order, ["a>", "b>", "<b", "<a"]);
});

test("the call's signal fires when the call is over, with a CANCELED reason shared by every call", async (t) => {
  const signals: AbortSignal[] = [];
  const keep: Interceptor = (next) => async (req) => {
    signals.push(req.signal);
    return next(req);
  };
  const client = createMeshClient(EchoService, server.address, { interceptors: [keep] });
  await client.echo({ id: "1" });
  await client.echo({ id: "2" });
  t.is(signals.length, 2);
  t.true(signals.every((s) => s.aborted));
  const reason = signals[0]!.reason;
  t.true(reason instanceof ConnectError);
  t.is((reason as ConnectError).code, Code.Canceled);
  t.is(signals[1]!.reason, reason, "one reason object, not one made per call");
});

test("the caller's abort ends the call with CANCELED; its timeout with DEADLINE_EXCEEDED", async (t) => {
  const client = createMeshClient(EchoService, server.address);
  const caller = new AbortController();
  const pending = client.echo({ id: "slow" }, { signal: caller.signal });
  setTimeout(() => caller.abort(new Error("user went away")), 50);
  const cancelled = await t.throwsAsync(pending, { instanceOf: ConnectError });
  t.is(cancelled?.code, Code.Canceled);
  t.regex(cancelled!.rawMessage, /user went away/);

  const late = await t.throwsAsync(client.echo({ id: "slow" }, { timeoutMs: 50 }), { instanceOf: ConnectError });
  t.is(late?.code, Code.DeadlineExceeded);

  const already = new AbortController();
  already.abort();
  const early = await t.throwsAsync(client.echo({ id: "x" }, { signal: already.signal }), { instanceOf: ConnectError });
  t.is(early?.code, Code.Canceled);
});

test("an interceptor's own error reaches the caller as a ConnectError", async (t) => {
  const refuse: Interceptor = () => async () => {
    throw new ConnectError("not today", Code.PermissionDenied);
  };
  const client = createMeshClient(EchoService, server.address, { interceptors: [refuse] });
  const err = await t.throwsAsync(client.echo({ id: "x" }), { instanceOf: ConnectError });
  t.is(err?.code, Code.PermissionDenied);
  t.is(err?.rawMessage, "not today");
});
