// The Connect Transport one admitted call goes through when the traffic
// policy has a say in it: the canary's transport when the call was routed
// there, the gateway's own otherwise; and, when the call was sampled for
// shadowing, a mirror of it handed off once the client's outcome is known.
// Attempts the primary answered UNAVAILABLE or that were cancelled are not
// mirrored (there is no answer to compare; an UNAVAILABLE one may be retried
// and mirrored then), so a call is mirrored at most once.
import type { DescMessage, DescMethodStreaming, DescMethodUnary, MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type StreamResponse, type Transport, type UnaryResponse } from "@connectrpc/connect";
import { codeOf } from "./shadow-runner.js";

/** A finished call in decoded form (Connect, gRPC-Web and REST paths). */
export type MessageCall =
  | {
      readonly kind: "unary";
      readonly method: DescMethodUnary;
      readonly request: MessageShape<DescMessage>;
      /** The headers sent upstream (identity, trace context, request id). */
      readonly headers: Headers;
      /** gRPC status the client got (0 = OK). */
      readonly code: number;
      readonly response?: MessageShape<DescMessage>;
    }
  | {
      readonly kind: "server_streaming";
      readonly method: DescMethodStreaming;
      readonly request: MessageShape<DescMessage>;
      readonly headers: Headers;
      readonly code: number;
    };

const notMirrored = new Set<number>([Code.Unavailable, Code.Canceled]);

export function routedTransport(primary: Transport, mirror: ((call: MessageCall) => void) | undefined): Transport {
  if (!mirror) return primary;
  const once = (call: MessageCall) => {
    if (notMirrored.has(call.code)) return;
    const m = mirror;
    mirror = undefined;
    m?.(call);
  };
  return {
    async unary<I extends DescMessage, O extends DescMessage>(
      method: DescMethodUnary<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: ConstructorParameters<typeof Headers>[0] | undefined,
      input: Parameters<Transport["unary"]>[4],
      contextValues?: Parameters<Transport["unary"]>[5],
    ): Promise<UnaryResponse<I, O>> {
      const base = { kind: "unary" as const, method: method as unknown as DescMethodUnary, request: input as MessageShape<DescMessage>, headers: new Headers(header) };
      let res: UnaryResponse<I, O>;
      try {
        res = await primary.unary(method, signal, timeoutMs, header, input as never, contextValues);
      } catch (e) {
        once({ ...base, code: codeOf(e) });
        throw e;
      }
      once({ ...base, code: 0, response: res.message as MessageShape<DescMessage> });
      return res;
    },

    async stream<I extends DescMessage, O extends DescMessage>(
      method: DescMethodStreaming<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: ConstructorParameters<typeof Headers>[0] | undefined,
      input: AsyncIterable<Parameters<Transport["unary"]>[4]>,
      contextValues?: Parameters<Transport["stream"]>[5],
    ): Promise<StreamResponse<I, O>> {
      // A server-streaming call has one request: keep it for the mirror.
      const requests: MessageShape<DescMessage>[] = [];
      for await (const m of input) requests.push(m as MessageShape<DescMessage>);
      const base = {
        kind: "server_streaming" as const,
        method: method as unknown as DescMethodStreaming,
        request: requests[0],
        headers: new Headers(header),
      };
      const replay = (async function* () {
        yield* requests;
      })();
      let res: StreamResponse<I, O>;
      try {
        res = await primary.stream(method, signal, timeoutMs, header, replay as never, contextValues);
      } catch (e) {
        if (requests.length === 1) once({ ...base, code: codeOf(e) });
        throw e;
      }
      if (requests.length !== 1) return res;
      const messages = res.message;
      return {
        ...res,
        message: (async function* () {
          try {
            for await (const m of messages) yield m;
          } catch (e) {
            once({ ...base, code: e instanceof ConnectError ? e.code : codeOf(e) });
            throw e;
          }
          once({ ...base, code: 0 });
        })(),
      };
    },
  };
}
