// OpenTelemetry's context in mesh's one AsyncLocalStorage (context-manager.ts), with nothing
// exported, in-process: context.with nests and restores across awaits, keeps the inbound
// call context, and a handler's deferred SERVER span is made when a downstream call needs it.
import test from "ava";
import { create } from "@bufbuild/protobuf";
import { context, createContextKey, trace, ROOT_CONTEXT, TraceFlags } from "@opentelemetry/api";
import { CatalogService, ProductSchema } from "../../gen/shop/catalog/v1/catalog_pb.js";
import { currentCallContext, runWithCallContext } from "../call-context.js";
import { serve, startMeshServer, type MeshServer } from "../server.js";
import { closeMeshClients, createMeshClient } from "../client.js";
import { startTracing, type TracingHandle } from "./tracing.js";
import { MeshContextManager } from "./context-manager.js";

let tracing: TracingHandle;
const servers: MeshServer[] = [];

test.before(async () => {
  tracing = await startTracing({ exporter: "none", instrumentations: [] });
});
test.after.always(async () => {
  closeMeshClients();
  await Promise.all(servers.map((s) => s.close(100)));
  await tracing?.shutdown();
});

const key = createContextKey("test key");

test("context.with nests, survives awaits and restores; the call context stays beside it", async (t) => {
  const header = new Headers({ "x-request-id": "req-1" });
  await runWithCallContext({ header }, async () => {
    t.is(context.active(), ROOT_CONTEXT);
    const outer = ROOT_CONTEXT.setValue(key, "outer");
    await context.with(outer, async () => {
      await new Promise((r) => setTimeout(r, 5));
      t.is(context.active().getValue(key), "outer");
      t.is(currentCallContext()?.header.get("x-request-id"), "req-1", "the call context rides in the same scope");
      await context.with(outer.setValue(key, "inner"), async () => {
        await Promise.resolve();
        t.is(context.active().getValue(key), "inner");
      });
      t.is(context.active().getValue(key), "outer", "restored after the inner with");
    });
    t.is(context.active(), ROOT_CONTEXT);
  });
  t.is(currentCallContext(), undefined);
});

test("attach makes a context active until disposed, and disposing twice restores once", (t) => {
  const manager = new MeshContextManager();
  const header = new Headers({ "x-request-id": "req-attach" });
  runWithCallContext({ header }, () => {
    const token = manager.attach(ROOT_CONTEXT.setValue(key, "attached"));
    t.is(manager.active().getValue(key), "attached");
    t.is(currentCallContext()?.header.get("x-request-id"), "req-attach", "attach keeps the call context");
    token.dispose();
    t.is(manager.active().getValue(key), undefined);
    const again = manager.attach(ROOT_CONTEXT.setValue(key, "second"));
    token.dispose(); // already disposed: must not undo the second attach
    t.is(manager.active().getValue(key), "second");
    again.dispose();
    t.is(manager.active().getValue(key), undefined);
  });
});

test("bind carries a context into a callback run later", async (t) => {
  const ctx = ROOT_CONTEXT.setValue(key, "bound");
  const read = context.bind(ctx, () => context.active().getValue(key));
  await new Promise((r) => setTimeout(r, 1));
  t.is(read(), "bound");
  t.is(context.active().getValue(key), undefined);
});

test("with nothing recorded, a handler that only calls downstream still passes on its caller's trace", async (t) => {
  let seenByBack: { traceId: string; spanId: string } | undefined;
  const back = await startMeshServer({
    name: "back",
    host: "127.0.0.1",
    port: 0,
    reflection: false,
    logger: { info() {}, warn() {}, error() {} },
    services: [
      serve(CatalogService, {
        async getProduct(req) {
          seenByBack = trace.getSpanContext(context.active());
          return { product: create(ProductSchema, { id: req.id }) };
        },
      }),
    ],
  });
  servers.push(back);
  const toBack = createMeshClient(CatalogService, back.address);
  const front = await startMeshServer({
    name: "front",
    host: "127.0.0.1",
    port: 0,
    reflection: false,
    logger: { info() {}, warn() {}, error() {} },
    // Nothing here asks for the context before the downstream call: its SERVER span is deferred.
    services: [serve(CatalogService, { getProduct: (req) => toBack.getProduct({ id: `${req.id}-inner` }) })],
  });
  servers.push(front);

  const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
  const caller = trace.setSpanContext(ROOT_CONTEXT, { traceId, spanId: "00f067aa0ba902b7", traceFlags: TraceFlags.SAMPLED, isRemote: true });
  const answer = await context.with(caller, () => createMeshClient(CatalogService, front.address).getProduct({ id: "p1" }));
  t.is(answer.product?.id, "p1-inner");
  t.truthy(seenByBack);
  t.is(seenByBack!.traceId, traceId, "one trace from the caller through front to back");
  t.regex(seenByBack!.spanId, /^[0-9a-f]{16}$/);
  t.not(seenByBack!.spanId, "00f067aa0ba902b7");
});
