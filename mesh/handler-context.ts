/**
 * The Connect HandlerContext mesh/server gives each call: the same contract as
 * `createHandlerContext` from @connectrpc/connect (requestHeader, timeoutMs(),
 * a signal that fires on client cancel, deadline, server close and call
 * completion, responseHeader / responseTrailer, values), built lazily.
 *
 * Why not createHandlerContext: it makes two AbortControllers and three
 * Headers per call up front, and the call ends with an abort(), which costs
 * about 15 µs on Node 20 (bench/mesh-vs-bare.ts shows it). Most handlers read
 * neither the signal nor the response headers, so here each piece exists only
 * once it is read; an aborted state reached before then is applied on first
 * read, so a handler cannot tell the difference.
 *
 * API
 *   class MeshHandlerContext implements HandlerContext
 *     constructor(method, metadata: grpc.Metadata, deadline: number | undefined, shutdownSignal?)
 *     abort(reason): void                 first reason wins; fires the signal if it exists
 *     get isAborted(): boolean
 *     get abortReason(): unknown          cancel, deadline or shutdown reason, if any
 *     get touchedResponseHeader(): Headers | undefined   only if a handler created it
 *     get touchedResponseTrailer(): Headers | undefined
 *     toPlainObject(): HandlerContext     every piece materialized (for Connect's interceptor helpers)
 */
import type * as grpc from "@grpc/grpc-js";
import { Code, ConnectError, createContextValues } from "@connectrpc/connect";
import type { ContextValues, HandlerContext } from "@connectrpc/connect";
import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { metadataEntries, methodPath } from "./grpc-codec.js";

export class MeshHandlerContext implements HandlerContext {
  readonly protocolName = "grpc";
  readonly requestMethod = "POST";
  readonly service: DescService;
  readonly url: string;

  private controller?: AbortController;
  private reason?: unknown;
  private timer?: NodeJS.Timeout;
  private _requestHeader?: Headers;
  private _responseHeader?: Headers;
  private _responseTrailer?: Headers;
  private _values?: ContextValues;

  constructor(
    readonly method: DescMethod,
    private readonly metadata: grpc.Metadata,
    /** Absolute deadline in epoch ms, if the caller set one. */
    private readonly deadline: number | undefined,
    private readonly shutdownSignal?: AbortSignal,
  ) {
    this.service = method.parent;
    this.url = methodPath(method);
  }

  // A method, not a per-instance arrow: tsx (esbuild keepNames) names every
  // function made per call, which showed up at 10% of a call's CPU time.
  timeoutMs(): number | undefined {
    return this.deadline === undefined ? undefined : Math.max(0, this.deadline - Date.now());
  }

  get requestHeader(): Headers {
    return (this._requestHeader ??= new Headers(metadataEntries(this.metadata)));
  }

  get responseHeader(): Headers {
    return (this._responseHeader ??= new Headers());
  }

  get responseTrailer(): Headers {
    return (this._responseTrailer ??= new Headers());
  }

  get values(): ContextValues {
    return (this._values ??= createContextValues());
  }

  get touchedResponseHeader(): Headers | undefined {
    return this._responseHeader;
  }

  get touchedResponseTrailer(): Headers | undefined {
    return this._responseTrailer;
  }

  /** Why the call was aborted (cancel, deadline, shutdown, completion), if it was. */
  get abortReason(): unknown {
    if (this.reason !== undefined) return this.reason;
    if (this.shutdownSignal?.aborted) return this.shutdownSignal.reason;
    if (this.deadline !== undefined && Date.now() >= this.deadline) {
      return new ConnectError("the operation timed out", Code.DeadlineExceeded);
    }
    return undefined;
  }

  get isAborted(): boolean {
    if (this.reason !== undefined) return true;
    if (this.shutdownSignal?.aborted) return true;
    return this.deadline !== undefined && Date.now() >= this.deadline;
  }

  get signal(): AbortSignal {
    if (this.controller) return this.controller.signal;
    const controller = (this.controller = new AbortController());
    if (this.reason !== undefined) {
      controller.abort(this.reason);
    } else if (this.shutdownSignal?.aborted) {
      this.abort(this.shutdownSignal.reason);
    } else {
      if (this.deadline !== undefined) {
        const left = this.deadline - Date.now();
        if (left <= 0) this.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded));
        else {
          this.timer = setTimeout(
            () => this.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded)),
            left,
          );
        }
      }
      if (this.shutdownSignal) {
        this.onShutdown = () => this.abort(this.shutdownSignal?.reason);
        this.shutdownSignal.addEventListener("abort", this.onShutdown);
      }
    }
    return controller.signal;
  }

  private onShutdown?: () => void;

  abort(reason: unknown): void {
    if (this.reason !== undefined) return;
    this.reason = reason ?? new ConnectError("the call was aborted", Code.Canceled);
    if (this.controller) {
      clearTimeout(this.timer);
      if (this.onShutdown) this.shutdownSignal?.removeEventListener("abort", this.onShutdown);
      this.controller.abort(this.reason);
    }
  }

  /** A plain object with every piece made: Connect's helpers copy contexts with Object.assign. */
  toPlainObject(): HandlerContext {
    return {
      method: this.method,
      service: this.service,
      signal: this.signal,
      timeoutMs: () => this.timeoutMs(),
      requestMethod: this.requestMethod,
      requestHeader: this.requestHeader,
      responseHeader: this.responseHeader,
      responseTrailer: this.responseTrailer,
      protocolName: this.protocolName,
      values: this.values,
      url: this.url,
    };
  }
}
