// REST/JSON routes from google.api.http rules: route, admit, build the
// request message, call upstream, answer JSON (unary) or NDJSON / SSE
// (server streaming).
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import { createRegistry, fromBinary, toJson, type DescMessage, type JsonValue, type MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type Transport } from "@connectrpc/connect";
import { file_google_rpc_error_details } from "../../gen/google/rpc/error_details_pb.js";
import type { GatewayConfig } from "../config.js";
import { EdgeError, asConnectError, errorJson, httpStatusOfError, type DetailDecoder } from "../errors.js";
import type { Pipeline } from "../pipeline.js";
import { parseGrpcTimeout } from "../policy/timeout.js";
import { buildRequest } from "../transcode/request.js";
import { responseJson } from "../transcode/response.js";
import { headerView } from "./header-view.js";
import type { RestRouter } from "../transcode/router.js";

export type AnyRequest = IncomingMessage | Http2ServerRequest;
export type AnyResponse = ServerResponse | Http2ServerResponse;

const detailRegistry = createRegistry(file_google_rpc_error_details);

/** google.rpc details (field violations and friends) decoded for the JSON error body. */
export const decodeDetail: DetailDecoder = (type, value) => {
  const desc = detailRegistry.getMessage(type);
  if (!desc) return undefined;
  try {
    return toJson(desc, fromBinary(desc, value));
  } catch {
    return undefined;
  }
};

export interface RestRoutesOptions {
  readonly router: RestRouter;
  readonly pipeline: Pipeline;
  readonly transportFor: (upstream: string) => Transport;
  readonly clientIp: (req: AnyRequest) => string;
  readonly config: () => GatewayConfig;
}

/** The request headers as the pipeline reads them (see header-view.ts). */
export function headersOf(req: AnyRequest): Headers {
  return headerView(req.headers);
}

/** Reads a request body up to `max` bytes within `timeoutMs`: 413 past the size, 408 past the time. */
export function readBody(req: AnyRequest, max: number, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers["content-length"] ?? 0);
    if (declared > max) {
      reject(new EdgeError(`request body exceeds ${max} bytes`, Code.ResourceExhausted, 413));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    const timer = setTimeout(() => {
      cleanup();
      reject(new EdgeError("request body not received in time", Code.DeadlineExceeded, 408));
    }, timeoutMs);
    const onData = (c: Buffer) => {
      size += c.length;
      if (size > max) {
        cleanup();
        reject(new EdgeError(`request body exceeds ${max} bytes`, Code.ResourceExhausted, 413));
        return;
      }
      chunks.push(c);
    };
    const onEnd = () => {
      cleanup();
      resolve(Buffer.concat(chunks, size));
    };
    const onError = (e: Error) => {
      cleanup();
      reject(e);
    };
    const cleanup = () => {
      clearTimeout(timer);
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onError);
    };
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("error", onError);
  });
}

export function writeRestError(res: AnyResponse, e: unknown, extra: Record<string, string> = {}): void {
  const err = asConnectError(e);
  if (res.headersSent) {
    res.end();
    return;
  }
  const headers: Record<string, string> = { ...extra, "content-type": "application/json" };
  if (err instanceof EdgeError) Object.assign(headers, err.httpHeaders);
  for (const k of ["retry-after", "www-authenticate", "ratelimit", "ratelimit-policy"]) {
    const v = err.metadata.get(k);
    if (v) headers[k] = v;
  }
  if (err.code === Code.Unauthenticated && !headers["www-authenticate"]) headers["www-authenticate"] = 'Bearer realm="protomesh"';
  const body = JSON.stringify(errorJson(err, decodeDetail));
  (res as ServerResponse).writeHead(httpStatusOfError(err), headers);
  res.end(body);
}

/**
 * Handles the request when a REST route matches its path; returns false
 * (without touching the response) when none does.
 */
export function createRestHandler(o: RestRoutesOptions) {
  return async (req: AnyRequest, res: AnyResponse, url: URL, base: Record<string, string>): Promise<boolean> => {
    const verb = req.method ?? "GET";
    const r = o.router.match(verb, url.pathname);
    if (r.kind === "not_found") return false;
    if (r.kind === "method_not_allowed") {
      writeRestError(res, new EdgeError(`method ${verb} not allowed for ${url.pathname}`, Code.Unimplemented, 405), {
        ...base,
        allow: r.allow.join(", "),
      });
      return true;
    }
    const { method: m, binding } = r.route;
    const config = o.config();
    const ac = new AbortController();
    const onClose = () => ac.abort();
    res.on("close", onClose);
    let headers = base;
    try {
      const reqHeaders = headersOf(req);
      const clientTimeoutMs = parseGrpcTimeout(reqHeaders.get("grpc-timeout")) ?? parseTimeoutHeader(reqHeaders);
      const streaming = m.method.methodKind === "server_streaming";
      const a = await o.pipeline.admit(m, { headers: reqHeaders, ip: o.clientIp(req), clientTimeoutMs }, streaming);
      headers = { ...base, ...a.responseHeaders };

      let body: JsonValue | undefined;
      if (binding.body !== "") {
        const raw = await readBody(req, config.limits.maxBodyBytes, config.limits.bodyTimeoutMs);
        if (raw.length > 0) {
          const ct = (reqHeaders.get("content-type") ?? "").split(";")[0].trim().toLowerCase();
          if (ct !== "application/json" && !ct.endsWith("+json") && ct !== "") {
            throw new EdgeError(`unsupported content type "${ct}": expected application/json`, Code.InvalidArgument, 415);
          }
          try {
            body = JSON.parse(raw.toString("utf8")) as JsonValue;
          } catch (e) {
            throw new EdgeError(`malformed JSON body: ${(e as Error).message}`, Code.InvalidArgument, 400);
          }
        }
      }
      const input = buildRequest(m.method.input, binding, { vars: r.vars, query: url.searchParams, body });
      const style = config.jsonStyle;
      const transport = o.transportFor(m.upstream);
      if (!streaming) {
        const out = await o.pipeline.unary(a, transport, input, ac.signal);
        const json = JSON.stringify(responseJson(m.method.output, out as MessageShape<DescMessage>, binding, style));
        (res as ServerResponse).writeHead(200, { ...headers, "content-type": "application/json" });
        if (verb === "HEAD") res.end();
        else res.end(json);
        return true;
      }
      const sse = (reqHeaders.get("accept") ?? "").includes("text/event-stream");
      const stream = await o.pipeline.stream(a, transport, input, ac.signal);
      (res as ServerResponse).writeHead(200, {
        ...headers,
        "content-type": sse ? "text/event-stream" : "application/x-ndjson",
        "cache-control": "no-cache",
        ...(sse ? { "x-accel-buffering": "no" } : {}),
      });
      const write = async (text: string) => {
        // Backpressure: a slow reader pauses the upstream stream instead of
        // piling messages up in memory.
        if (!(res as ServerResponse).write(text)) {
          await new Promise<void>((resolve) => {
            const done = () => {
              res.off("drain", done);
              res.off("close", done);
              resolve();
            };
            res.on("drain", done);
            res.on("close", done);
          });
        }
      };
      // SSE comments keep idle proxies from cutting a quiet stream.
      const heartbeat = sse ? setInterval(() => (res as ServerResponse).write(": keep-alive\n\n"), 15_000) : undefined;
      try {
        for await (const msg of stream) {
          if (ac.signal.aborted) break;
          const json = responseJson(m.method.output, msg as MessageShape<DescMessage>, binding, style);
          await write(sse ? `data: ${JSON.stringify(json)}\n\n` : `${JSON.stringify({ result: json })}\n`);
        }
      } catch (e) {
        // Mid-stream failure: a final error event, never a silent close.
        const err = errorJson(asConnectError(e), decodeDetail);
        if (!ac.signal.aborted) {
          await write(sse ? `event: error\ndata: ${JSON.stringify(err)}\n\n` : `${JSON.stringify({ error: err })}\n`);
        }
      }
      clearInterval(heartbeat);
      res.end();
      return true;
    } catch (e) {
      if (ac.signal.aborted && !(e instanceof ConnectError)) return true;
      writeRestError(res, e, headers);
      return true;
    } finally {
      res.off("close", onClose);
    }
  };
}

function parseTimeoutHeader(h: Headers): number | undefined {
  const v = h.get("connect-timeout-ms") ?? h.get("x-timeout-ms");
  return v && /^\d{1,10}$/.test(v) ? Number(v) : undefined;
}
