// The test-only echo service (proto/protomesh/testing/v1/echo.proto): what
// the gateway's conformance tests and benchmarks call upstream.
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { BadRequestSchema } from "../../gen/google/rpc/error_details_pb.js";
import {
  EchoResponseSchema,
  EchoService,
  type EchoRequest,
  type EchoResponse,
} from "../../gen/protomesh/testing/v1/echo_pb.js";
import { parseCode } from "../errors.js";

/** Request metadata the echo service reports back. */
const reported = ["x-mesh-user-id", "x-mesh-user-role", "x-request-id", "traceparent", "idempotency-key", "x-forwarded-for", "grpc-timeout"];

function respond(req: EchoRequest, ctx: HandlerContext, index = 0): EchoResponse {
  const metadata: Record<string, string> = {};
  for (const k of reported) {
    const v = ctx.requestHeader.get(k);
    if (v !== null) metadata[k] = v;
  }
  const t = ctx.timeoutMs();
  if (t !== undefined) metadata["timeout-ms"] = String(t);
  return create(EchoResponseSchema, { request: req, metadata, index });
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new ConnectError("canceled", Code.Canceled));
    });
  });
}

const delayMs = (req: EchoRequest) => (req.delay ? Number(req.delay.seconds) * 1000 + req.delay.nanos / 1e6 : 0);

function failure(req: EchoRequest): ConnectError {
  const code = parseCode(req.failCode) ?? Code.Unknown;
  const err = new ConnectError(`echo failed as asked: ${req.failCode}`, code);
  if (code === Code.InvalidArgument) {
    err.details.push({
      desc: BadRequestSchema,
      value: create(BadRequestSchema, {
        fieldViolations: [{ field: "fail_code", description: "asked to fail", reason: "TEST" }],
      }),
    });
  }
  return err;
}

export interface EchoState {
  /** Calls per id seen by Flaky. */
  readonly flaky: Map<string, number>;
  calls: number;
}

export function createEchoImpl(state: EchoState = { flaky: new Map(), calls: 0 }): ServiceImpl<typeof EchoService> {
  const echo = async (req: EchoRequest, ctx: HandlerContext) => {
    state.calls++;
    if (delayMs(req) > 0) await sleep(delayMs(req), ctx.signal);
    return respond(req, ctx);
  };
  return {
    echo,
    echoShapes: echo,
    whoAmI: echo,
    adminOnly: echo,
    limited: echo,
    internal: echo,
    async fail(req, ctx) {
      state.calls++;
      if (delayMs(req) > 0) await sleep(delayMs(req), ctx.signal);
      if (req.failCode === "" || req.failCode === "OK") return respond(req, ctx);
      throw failure(req);
    },
    async flaky(req, ctx) {
      state.calls++;
      const n = (state.flaky.get(req.id) ?? 0) + 1;
      state.flaky.set(req.id, n);
      if (n <= req.failTimes) throw new ConnectError(`flaky: attempt ${n}`, Code.Unavailable);
      return respond(req, ctx);
    },
    async *echoStream(req, ctx) {
      state.calls++;
      for (let i = 0; i < req.count; i++) {
        if (delayMs(req) > 0) await sleep(delayMs(req), ctx.signal);
        yield respond(req, ctx, i);
      }
      if (req.failCode !== "") throw failure(req);
    },
  };
}
