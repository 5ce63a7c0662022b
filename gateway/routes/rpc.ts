// Connect (JSON and binary), gRPC-Web and gRPC routes through connect-node:
// one handler per public method, built from the descriptors, each proxying
// upstream through the policy pipeline.
import type { IncomingMessage } from "node:http";
import type { Http2ServerRequest } from "node:http2";
import type { DescMessage, DescMethodServerStreaming, DescMethodUnary, MessageShape } from "@bufbuild/protobuf";
import {
  createContextKey,
  createContextValues,
  type ConnectRouter,
  type HandlerContext,
  type Transport,
} from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { GatewayMethod } from "../descriptors.js";
import type { Pipeline } from "../pipeline.js";

const kClientIp = createContextKey<string>("", { description: "client IP" });

export interface RpcRoutesOptions {
  readonly methods: readonly GatewayMethod[];
  readonly pipeline: Pipeline;
  readonly transportFor: (upstream: string) => Transport;
  readonly clientIp: (req: IncomingMessage | Http2ServerRequest) => string;
  readonly maxBodyBytes: number;
}

export function createRpcRoutes(o: RpcRoutesOptions) {
  const edgeRequest = (ctx: HandlerContext) => ({
    headers: ctx.requestHeader,
    ip: ctx.values.get(kClientIp),
    clientTimeoutMs: ctx.timeoutMs(),
  });
  const routes = (router: ConnectRouter) => {
    for (const m of o.methods) {
      const transport = () => o.transportFor(m.upstream);
      if (m.method.methodKind === "unary") {
        router.rpc(m.method as DescMethodUnary<DescMessage, DescMessage>, async (req: MessageShape<DescMessage>, ctx: HandlerContext) => {
          const a = await o.pipeline.admit(m, edgeRequest(ctx), false);
          for (const [k, v] of Object.entries(a.responseHeaders)) ctx.responseHeader.set(k, v);
          return o.pipeline.unary(a, transport(), req, ctx.signal);
        });
      } else if (m.method.methodKind === "server_streaming") {
        router.rpc(m.method as DescMethodServerStreaming<DescMessage, DescMessage>, async function* (req: MessageShape<DescMessage>, ctx: HandlerContext) {
          const a = await o.pipeline.admit(m, edgeRequest(ctx), true);
          for (const [k, v] of Object.entries(a.responseHeaders)) ctx.responseHeader.set(k, v);
          yield* await o.pipeline.stream(a, transport(), req, ctx.signal);
        });
      }
    }
  };
  return connectNodeAdapter({
    routes,
    readMaxBytes: o.maxBodyBytes,
    contextValues: (req) => createContextValues().set(kClientIp, o.clientIp(req)),
  });
}
