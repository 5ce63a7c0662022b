// A lean Connect Transport speaking gRPC over one shared HTTP/2 session per
// upstream, for the REST, Connect and gRPC-Web routes. Profiling showed the
// grpc-js client (channel, filters, metadata objects) and its promise/abort
// plumbing to be most of the gateway's per-call cost; this does only what
// the edge needs. Deadline (grpc-timeout), trace context and identity travel
// as the headers the pipeline built; errors come back as ConnectErrors with
// their details (grpc-status-details-bin), like mesh/client's.
import http2, { type ClientHttp2Stream, type IncomingHttpHeaders } from "node:http2";
import {
  create,
  fromBinary,
  isMessage,
  toBinary,
  type DescMessage,
  type DescMethodStreaming,
  type DescMethodUnary,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import { Code, ConnectError, type StreamResponse, type Transport, type UnaryResponse } from "@connectrpc/connect";
import { decodeStatusDetails } from "../../mesh/errors.js";
import type { UpstreamSessions } from "../routes/grpc-proxy.js";
import { formatGrpcTimeout } from "../policy/timeout.js";

const { NGHTTP2_CANCEL } = http2.constants;
type HeaderInit = ConstructorParameters<typeof Headers>[0];

function toMessage<I extends DescMessage>(schema: I, input: MessageInitShape<I>): MessageShape<I> {
  return isMessage(input, schema) ? (input as MessageShape<I>) : create(schema, input);
}

function frame(bytes: Uint8Array): Buffer {
  const b = Buffer.allocUnsafe(5 + bytes.length);
  b[0] = 0;
  b.writeUInt32BE(bytes.length, 1);
  b.set(bytes, 5);
  return b;
}

function statusError(h: IncomingHttpHeaders): ConnectError | undefined {
  const raw = h["grpc-status"];
  if (raw === undefined) return undefined;
  const code = Number(raw);
  if (code === 0) return undefined;
  let message = String(h["grpc-message"] ?? "");
  try {
    message = decodeURIComponent(message);
  } catch {
    /* keep it as sent */
  }
  const bin = h["grpc-status-details-bin"];
  const err = decodeStatusDetails(
    typeof bin === "string" ? Buffer.from(bin, "base64") : undefined,
    code >= 1 && code <= 16 ? (code as Code) : Code.Unknown,
    message,
  );
  err.isWireError = true;
  return err;
}

function toHeaders(h: IncomingHttpHeaders): Headers {
  const out = new Headers();
  for (const [k, v] of Object.entries(h)) {
    if (k.startsWith(":") || v === undefined) continue;
    out.set(k, Array.isArray(v) ? v.join(", ") : String(v));
  }
  return out;
}

/** Splits gRPC length-prefixed messages out of a byte stream. */
class FrameReader {
  private buf: Buffer = Buffer.alloc(0);
  push(chunk: Buffer): Buffer[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const out: Buffer[] = [];
    while (this.buf.length >= 5) {
      if (this.buf[0] !== 0) throw new ConnectError("compressed upstream messages are not supported", Code.Internal);
      const len = this.buf.readUInt32BE(1);
      if (this.buf.length < 5 + len) break;
      out.push(this.buf.subarray(5, 5 + len));
      this.buf = this.buf.subarray(5 + len);
    }
    return out;
  }
  get pending(): number {
    return this.buf.length;
  }
}

export function createH2GrpcTransport(sessions: UpstreamSessions, target: string | (() => string)): Transport {
  const targetOf = typeof target === "string" ? () => target : target;

  function open(
    path: string,
    header: HeaderInit | undefined,
    timeoutMs: number | undefined,
    signal: AbortSignal | undefined,
  ): ClientHttp2Stream {
    const out: http2.OutgoingHttpHeaders = {
      ":method": "POST",
      ":path": path,
      "content-type": "application/grpc",
      te: "trailers",
    };
    if (header instanceof Headers) header.forEach((v, k) => (out[k] = v));
    else if (Array.isArray(header)) new Headers(header).forEach((v, k) => (out[k] = v));
    else if (header) {
      // The pipeline's plain record (lower-case names): copied as it is.
      const h = header as Record<string, string>;
      for (const k in h) out[k.toLowerCase()] = h[k];
    }
    if (timeoutMs !== undefined) out["grpc-timeout"] = formatGrpcTimeout(timeoutMs);
    if (signal?.aborted) throw new ConnectError("request canceled", Code.Canceled);
    return sessions.get(targetOf()).request(out);
  }

  /** Wires abort and deadline to the stream; returns a disposer. */
  function guard(s: ClientHttp2Stream, fail: (e: ConnectError) => void, timeoutMs: number | undefined, signal: AbortSignal | undefined) {
    const onAbort = () => {
      fail(new ConnectError("request canceled", Code.Canceled));
      s.close(NGHTTP2_CANCEL);
    };
    signal?.addEventListener("abort", onAbort);
    const timer =
      timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            fail(new ConnectError("the operation timed out", Code.DeadlineExceeded));
            s.close(NGHTTP2_CANCEL);
          }, timeoutMs);
    return () => {
      signal?.removeEventListener("abort", onAbort);
      clearTimeout(timer);
    };
  }

  return {
    unary<I extends DescMessage, O extends DescMessage>(
      method: DescMethodUnary<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: HeaderInit | undefined,
      input: MessageInitShape<I>,
    ): Promise<UnaryResponse<I, O>> {
      return new Promise((resolve, reject) => {
        let s: ClientHttp2Stream;
        try {
          s = open(`/${method.parent.typeName}/${method.name}`, header, timeoutMs, signal);
        } catch (e) {
          reject(e instanceof ConnectError ? e : new ConnectError("upstream unreachable", Code.Unavailable));
          return;
        }
        let done = false;
        const fail = (e: ConnectError) => {
          if (done) return;
          done = true;
          dispose();
          reject(e);
        };
        const dispose = guard(s, fail, timeoutMs, signal);
        let responseHeaders: IncomingHttpHeaders = {};
        let trailers: IncomingHttpHeaders | undefined;
        const chunks: Buffer[] = [];
        s.on("response", (h) => (responseHeaders = h));
        s.on("data", (c: Buffer) => chunks.push(c));
        s.on("trailers", (t) => (trailers = t));
        s.on("error", () => fail(new ConnectError("upstream connection failed", Code.Unavailable)));
        s.on("close", () => {
          if (done) return;
          const status = trailers ?? (responseHeaders["grpc-status"] !== undefined ? responseHeaders : undefined);
          if (!status) {
            fail(new ConnectError("upstream closed the stream without a status", Code.Unavailable));
            return;
          }
          const err = statusError(status);
          if (err) {
            fail(err);
            return;
          }
          let messages: Buffer[];
          try {
            messages = new FrameReader().push(Buffer.concat(chunks));
          } catch (e) {
            fail(ConnectError.from(e));
            return;
          }
          if (messages.length !== 1) {
            fail(new ConnectError(`protocol error: ${messages.length} messages for a unary call`, Code.Unimplemented));
            return;
          }
          done = true;
          dispose();
          const received = trailers ?? {};
          let header: Headers | undefined;
          let trailer: Headers | undefined;
          resolve({
            stream: false,
            service: method.parent,
            method,
            // Built on first use: the edge rarely reads them.
            get header() {
              return (header ??= toHeaders(responseHeaders));
            },
            message: fromBinary(method.output, messages[0]),
            get trailer() {
              return (trailer ??= toHeaders(received));
            },
          });
        });
        s.end(frame(toBinary(method.input, toMessage(method.input, input))));
      });
    },

    async stream<I extends DescMessage, O extends DescMessage>(
      method: DescMethodStreaming<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: HeaderInit | undefined,
      input: AsyncIterable<MessageInitShape<I>>,
    ): Promise<StreamResponse<I, O>> {
      if (method.methodKind !== "server_streaming") {
        throw new ConnectError(`${method.methodKind} is not supported at the edge`, Code.Unimplemented);
      }
      let request: MessageInitShape<I> | undefined;
      for await (const m of input) request = m;
      if (request === undefined) throw new ConnectError("server-streaming call without a request", Code.InvalidArgument);
      const s = open(`/${method.parent.typeName}/${method.name}`, header, timeoutMs, signal);
      const queue: Array<MessageShape<O>> = [];
      let final: ConnectError | null | undefined; // null: ended OK
      let wake: (() => void) | undefined;
      const finish = (e: ConnectError | null) => {
        if (final !== undefined) return;
        final = e;
        dispose();
        wake?.();
      };
      const dispose = guard(s, (e) => finish(e), timeoutMs, signal);
      const reader = new FrameReader();
      let trailers: IncomingHttpHeaders | undefined;
      const responseHeaders = await new Promise<IncomingHttpHeaders>((resolve, reject) => {
        s.once("response", (h) => {
          const err = statusError(h);
          if (err) {
            finish(err);
            reject(err);
            return;
          }
          // Trailers-only: a stream that sent no message ends with its status in the headers
          // (grpc-js does this), and no trailers event follows.
          if (h["grpc-status"] !== undefined) trailers = h;
          resolve(h);
        });
        s.once("error", () => reject(new ConnectError("upstream connection failed", Code.Unavailable)));
        s.once("close", () => {
          if (final === undefined) reject(final ?? new ConnectError("upstream closed the stream", Code.Unavailable));
          else if (final) reject(final);
        });
        s.end(frame(toBinary(method.input, toMessage(method.input, request!))));
      });
      s.on("data", (c: Buffer) => {
        try {
          for (const m of reader.push(c)) queue.push(fromBinary(method.output, m));
        } catch (e) {
          finish(ConnectError.from(e));
          s.close(NGHTTP2_CANCEL);
        }
        if (queue.length >= 16) s.pause();
        wake?.();
      });
      s.on("trailers", (t) => (trailers = t));
      s.on("error", () => finish(new ConnectError("upstream connection failed", Code.Unavailable)));
      const onClose = () => {
        if (!trailers) finish(new ConnectError("upstream closed the stream without a status", Code.Unavailable));
        else finish(statusError(trailers) ?? null);
      };
      s.on("close", onClose);
      // A trailers-only stream can be closed before this line runs, its close event gone.
      // Finish it after whatever the stream still has queued (its data, its trailers) has
      // been emitted, not now: finish() is once only, so the close event may still win.
      if (s.closed) setImmediate(onClose);
      const trailer = new Headers();
      return {
        stream: true,
        service: method.parent,
        method,
        header: toHeaders(responseHeaders),
        trailer,
        message: {
          [Symbol.asyncIterator]() {
            return {
              async next(): Promise<IteratorResult<MessageShape<O>>> {
                for (;;) {
                  if (queue.length > 0) {
                    const value = queue.shift()!;
                    if (queue.length < 8) s.resume();
                    return { done: false, value };
                  }
                  if (final !== undefined) {
                    if (trailers) toHeaders(trailers).forEach((v, k) => trailer.set(k, v));
                    if (final) throw final;
                    return { done: true, value: undefined };
                  }
                  await new Promise<void>((r) => (wake = r));
                  wake = undefined;
                }
              },
              async return(): Promise<IteratorResult<MessageShape<O>>> {
                if (final === undefined) {
                  finish(new ConnectError("canceled by the reader", Code.Canceled));
                  s.close(NGHTTP2_CANCEL);
                }
                return { done: true, value: undefined };
              },
            };
          },
        },
      };
    },
  };
}
