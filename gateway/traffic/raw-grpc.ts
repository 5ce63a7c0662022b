// Shadow calls for the gateway's plain-gRPC fast path, which proxies frames
// without decoding them: the buffered request body goes to the shadow target
// as it is, over one HTTP/2 session per target, and the answer comes back as
// a status code and (for unary calls) the raw response body.
import http2, { type ClientHttp2Session } from "node:http2";
import { Code } from "@connectrpc/connect";
import { formatGrpcTimeout } from "../policy/timeout.js";

const { NGHTTP2_CANCEL } = http2.constants;

/** Request headers never copied to a shadow call (the session sets its own). */
const dropped = new Set(["connection", "keep-alive", "content-length", "transfer-encoding", "host", "grpc-timeout", "te"]);

/** One HTTP/2 session per shadow target, reopened when it closes. */
export class RawSessions {
  private readonly sessions = new Map<string, ClientHttp2Session>();

  get(target: string): ClientHttp2Session {
    const have = this.sessions.get(target);
    if (have && !have.closed && !have.destroyed) return have;
    const s = http2.connect(`http://${target}`);
    const forget = () => {
      if (this.sessions.get(target) === s) this.sessions.delete(target);
    };
    s.on("error", forget);
    s.on("close", forget);
    s.on("goaway", forget);
    // A shadow session must not keep the process alive.
    s.unref();
    this.sessions.set(target, s);
    return s;
  }

  close(): void {
    for (const s of this.sessions.values()) s.destroy();
    this.sessions.clear();
  }
}

export interface RawGrpcAnswer {
  readonly code: number;
  /** The response body (length-prefixed messages), when kept. */
  readonly body?: Buffer;
}

/**
 * Sends one gRPC call with a ready-made body; resolves with its status (never
 * rejects: a connection failure is UNAVAILABLE, the signal CANCELLED).
 */
export function rawGrpcCall(
  session: ClientHttp2Session,
  path: string,
  headers: Readonly<Record<string, string | string[] | number | undefined>>,
  body: Uint8Array,
  timeoutMs: number,
  signal: AbortSignal,
  keepBody: boolean,
): Promise<RawGrpcAnswer> {
  return new Promise((resolve) => {
    const out: http2.OutgoingHttpHeaders = {};
    for (const [k, v] of Object.entries(headers)) {
      if (v !== undefined && !k.startsWith(":") && !dropped.has(k)) out[k] = v;
    }
    out[":method"] = "POST";
    out[":path"] = path;
    out["content-type"] ??= "application/grpc";
    out.te = "trailers";
    out["grpc-timeout"] = formatGrpcTimeout(timeoutMs);
    out["x-mesh-shadow"] = "1";

    let done = false;
    const finish = (a: RawGrpcAnswer) => {
      if (done) return;
      done = true;
      signal.removeEventListener("abort", onAbort);
      resolve(a);
    };
    let req: http2.ClientHttp2Stream;
    try {
      req = session.request(out);
    } catch {
      finish({ code: Code.Unavailable });
      return;
    }
    const onAbort = () => {
      if (!req.closed) req.close(NGHTTP2_CANCEL);
      finish({ code: Code.Canceled });
    };
    if (signal.aborted) return onAbort();
    signal.addEventListener("abort", onAbort);

    const chunks: Buffer[] = [];
    let status: number | undefined;
    req.on("response", (h) => {
      // Trailers-only answer: the status is in the headers.
      if (h["grpc-status"] !== undefined) status = Number(h["grpc-status"]);
    });
    req.on("data", (c: Buffer) => {
      if (keepBody) chunks.push(c);
    });
    req.on("trailers", (t) => {
      if (t["grpc-status"] !== undefined) status = Number(t["grpc-status"]);
    });
    req.on("end", () => finish({ code: status ?? Code.Unknown, body: keepBody ? Buffer.concat(chunks) : undefined }));
    req.on("error", () => finish({ code: Code.Unavailable }));
    req.on("close", () => finish({ code: status ?? Code.Unavailable, body: keepBody ? Buffer.concat(chunks) : undefined }));
    req.end(body);
  });
}
