// The seam between mesh/server + mesh/client and the RPC telemetry (rpc-telemetry.ts).
// mesh/server and mesh/client import only this file (types and one variable), so a process
// started without the telemetry register entry loads no OpenTelemetry SDK and pays one
// `undefined` check per call. startTracing() installs the implementation.
import type * as grpc from "@grpc/grpc-js";
import type { DescMethod } from "@bufbuild/protobuf";

/** One RPC being served: its SERVER span and its metrics. */
export interface ServerRpc {
  /**
   * The trace context the handler runs in, with the SERVER span active (a child of the
   * caller's traceparent): an OpenTelemetry Context, opaque to mesh/server, which hands it
   * to runInboundCall (mesh/call-context).
   */
  readonly trace: unknown;
  /** Ends the span and counts the call: gRPC status code, and the status message if not OK. */
  end(code: number, message?: string): void;
}

/** One RPC being made: its CLIENT span (traceparent already written into the metadata) and its metrics. */
export interface ClientRpc {
  end(code: number, message?: string): void;
}

export interface RpcTelemetry {
  /** undefined for methods that are not traced (grpc.health.v1: probes, not traffic). */
  server(method: DescMethod, metadata: grpc.Metadata): ServerRpc | undefined;
  /** Starts the CLIENT span under the active context and writes its traceparent into `metadata`. */
  client(method: DescMethod, target: string, metadata: grpc.Metadata): ClientRpc | undefined;
}

let installed: RpcTelemetry | undefined;

/** The installed RPC telemetry; undefined when telemetry is off. */
export function rpcTelemetry(): RpcTelemetry | undefined {
  return installed;
}

export function installRpcTelemetry(t: RpcTelemetry | undefined): void {
  installed = t;
}
